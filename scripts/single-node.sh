#!/usr/bin/env bash
# Builds Sluice and starts a single node on embedded defaults: the control plane (metadata in
# DATA_DIR/meta.redb) and one data plane (objects in DATA_DIR/objects) with its Kafka listener.
# Ctrl-C stops both. Extra arguments go to the data plane (e.g. --cores 1).
#
#   scripts/single-node.sh                      # 127.0.0.1:9092, ./data
#   SLUICE_DATA_DIR=/tmp/s scripts/single-node.sh --cores 2
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
DATA_DIR="${SLUICE_DATA_DIR:-./data}"
LISTEN="${SLUICE_LISTEN:-127.0.0.1:9092}"
RPC="${SLUICE_RPC_LISTEN:-127.0.0.1:9093}"

if ! command -v protoc >/dev/null 2>&1; then
    # The control plane's etcd client compiles etcd's protocol definitions when it is built.
    echo "installing protobuf-compiler (needed to build)" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update >&2 && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y protobuf-compiler >&2
fi
cargo build --release --bins -p sluice-controlplane -p sluice-dataplane
BIN="$CARGO_TARGET_DIR/release"

pids=()
stop() {
    trap - INT TERM EXIT
    # The data plane first (it drains: finishes what is in flight, then leaves), then the
    # control plane it needs for that.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    echo "sluice stopped"
}
trap stop INT TERM EXIT

# Each in its own session, so Ctrl-C reaches this script only, which stops them in order.
setsid "$BIN/sluice-controlplane" --data-dir "$DATA_DIR" --rpc-listen "$RPC" &
pids+=($!)
setsid "$BIN/sluice-dataplane" --data-dir "$DATA_DIR" --controlplane "$RPC" --listen "$LISTEN" "$@" &
pids+=($!)

# Ready when the Kafka port accepts connections.
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/${LISTEN%:*}/${LISTEN##*:}") 2>/dev/null; then
        echo "sluice is listening for Kafka clients on $LISTEN (data in $DATA_DIR; Ctrl-C stops it)"
        break
    fi
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "sluice failed to start" >&2; exit 1; }; done
    sleep 0.1
done
wait -n "${pids[@]}"
