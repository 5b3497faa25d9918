#!/usr/bin/env bash
# The diskless way to run Sluice on one machine: etcd, an S3-compatible server, two control
# planes (one leads, one stands by) and DATAPLANES data planes on loopback. Data planes keep
# their WAL objects in S3 and nothing on disk; control planes keep their metadata in etcd.
# Ctrl-C stops everything. Builds the binaries first.
#
#   scripts/cluster.sh                     # 2 data planes
#   DATAPLANES=3 CORES=1 scripts/cluster.sh
#
# Data (etcd's, the bucket's, logs) goes to a temp dir, printed at start.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
DATAPLANES="${DATAPLANES:-2}"
CORES="${CORES:-1}"

bash scripts/etcd.sh --install
bash scripts/s3-server.sh --install
command -v protoc >/dev/null 2>&1 || { echo "protoc missing: run scripts/single-node.sh once, or apt-get install protobuf-compiler" >&2; exit 1; }
cargo build --release --bins -p sluice-controlplane -p sluice-dataplane
BIN="$CARGO_TARGET_DIR/release"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1 after 30 s; logs in $RUN" >&2
    exit 1
}

RUN="$(mktemp -d -t sluice-cluster.XXXXXX)"
export AWS_ACCESS_KEY_ID=sluice AWS_SECRET_ACCESS_KEY=sluice-secret-key
pids=()
stop() {
    trap - INT TERM EXIT
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "cluster stopped (logs in $RUN)"
}
trap stop INT TERM EXIT

ETCD_PORT="$(free_port)"
bash scripts/etcd.sh "$ETCD_PORT" >"$RUN/etcd.log" 2>&1 &
pids+=($!)
S3_PORT="$(free_port)"
bash scripts/s3-server.sh "$S3_PORT" >"$RUN/s3.log" 2>&1 &
pids+=($!)
wait_port "$ETCD_PORT"
wait_port "$S3_PORT"

META="etcd://127.0.0.1:$ETCD_PORT/sluice"
CPS=()
for i in 1 2; do
    port="$(free_port)"
    CPS+=("127.0.0.1:$port")
    "$BIN/sluice-controlplane" --metadata "$META" --data-dir "$RUN/cp$i" --rpc-listen "127.0.0.1:$port" \
        --object-store s3://sluice/wal --s3-endpoint "http://127.0.0.1:$S3_PORT" >"$RUN/controlplane$i.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
done
CONTROLPLANES="$(IFS=,; echo "${CPS[*]}")"

BOOTSTRAP=()
for i in $(seq 1 "$DATAPLANES"); do
    port="$(free_port)"
    BOOTSTRAP+=("127.0.0.1:$port")
    "$BIN/sluice-dataplane" --node-id "$i" --cores "$CORES" --data-dir "$RUN/dp$i" --controlplane "$CONTROLPLANES" \
        --listen "127.0.0.1:$port" --object-store s3://sluice/wal --s3-endpoint "http://127.0.0.1:$S3_PORT" \
        >"$RUN/dataplane$i.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
done

echo "sluice cluster up: etcd 127.0.0.1:$ETCD_PORT, S3 http://127.0.0.1:$S3_PORT (bucket sluice), control planes $CONTROLPLANES"
echo "bootstrap: $(IFS=,; echo "${BOOTSTRAP[*]}")   (logs in $RUN; Ctrl-C stops all)"
wait -n "${pids[@]}" || true
echo "a process exited; see $RUN" >&2
