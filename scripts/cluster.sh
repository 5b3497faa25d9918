#!/usr/bin/env bash
# The diskless way to run Sluice on one machine: etcd, an S3-compatible server, two control
# planes (one leads, one stands by) and ZONES x DATAPLANES_PER_ZONE data planes on loopback,
# each told its zone (zones are named a, b, c, ...). Data planes keep their WAL objects in S3
# and nothing on disk; control planes keep their metadata in etcd. Prints a bootstrap address
# per zone and the client.id that keeps a client in it. Ctrl-C stops everything (each data
# plane drains first). Builds the binaries first.
#
#   scripts/cluster.sh                                   # 1 zone, 2 data planes of 1 core
#   ZONES=2 DATAPLANES_PER_ZONE=2 CORES=1 scripts/cluster.sh
#   DATAPLANES=3 scripts/cluster.sh                      # = ZONES=1 DATAPLANES_PER_ZONE=3
#
# The status page of the leading control plane is printed too (STATUS_PORT, default 9095).
#
# Data (etcd's, the bucket's, logs) goes to a temp dir, printed at start.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
ZONES="${ZONES:-1}"
DATAPLANES_PER_ZONE="${DATAPLANES_PER_ZONE:-${DATAPLANES:-2}}"
CORES="${CORES:-1}"
STATUS_PORT="${STATUS_PORT:-9095}"
for v in ZONES DATAPLANES_PER_ZONE CORES; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "$v=${!v}: must be a positive number" >&2; exit 2; }
done
(( ZONES <= 26 )) || { echo "ZONES=$ZONES: at most 26 (zones are named a..z)" >&2; exit 2; }

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
dps=()
stop() {
    trap - INT TERM EXIT
    # Data planes first, each draining (leaving the list, finishing what is in flight) while
    # the control planes, etcd and S3 it needs are still up; then the rest, newest first.
    for p in "${dps[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${dps[@]}"; do wait "$p" 2>/dev/null || true; done
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "cluster stopped (logs in $RUN)"
}
trap stop INT TERM EXIT

ETCD_PORT="$(free_port)"
setsid bash scripts/etcd.sh "$ETCD_PORT" >"$RUN/etcd.log" 2>&1 &
pids+=($!)
S3_PORT="$(free_port)"
setsid bash scripts/s3-server.sh "$S3_PORT" >"$RUN/s3.log" 2>&1 &
pids+=($!)
wait_port "$ETCD_PORT"
wait_port "$S3_PORT"

META="etcd://127.0.0.1:$ETCD_PORT/sluice"
CPS=()
for i in 1 2; do
    port="$(free_port)"
    CPS+=("127.0.0.1:$port")
    # Each control plane serves /metrics and the status page; the leader's answers.
    status=$((STATUS_PORT + i - 1))
    setsid "$BIN/sluice-controlplane" --metadata "$META" --data-dir "$RUN/cp$i" --rpc-listen "127.0.0.1:$port" \
        --metrics-listen "127.0.0.1:$status" \
        --object-store s3://sluice/wal --s3-endpoint "http://127.0.0.1:$S3_PORT" >"$RUN/controlplane$i.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
done
CONTROLPLANES="$(IFS=,; echo "${CPS[*]}")"

declare -A BOOTSTRAP
n=0
for z in $(seq 0 $((ZONES - 1))); do
    zone="$(printf "\\$(printf '%03o' $((97 + z)))")"
    for _ in $(seq 1 "$DATAPLANES_PER_ZONE"); do
        n=$((n + 1))
        port="$(free_port)"
        BOOTSTRAP[$zone]="${BOOTSTRAP[$zone]:+${BOOTSTRAP[$zone]},}127.0.0.1:$port"
        # No --node-id: the control plane assigns each data plane the lowest free one.
        # Its own session, so Ctrl-C here reaches this script only, which stops it in order.
        setsid "$BIN/sluice-dataplane" --zone "$zone" --cores "$CORES" --data-dir "$RUN/dp$n" --controlplane "$CONTROLPLANES" \
            --listen "127.0.0.1:$port" --object-store s3://sluice/wal --s3-endpoint "http://127.0.0.1:$S3_PORT" \
            >"$RUN/dataplane$n.log" 2>&1 &
        pids+=($!)
        dps+=($!)
        wait_port "$port"
    done
done

echo "sluice cluster up: etcd 127.0.0.1:$ETCD_PORT, S3 http://127.0.0.1:$S3_PORT (bucket sluice), control planes $CONTROLPLANES"
echo "status page: http://127.0.0.1:$STATUS_PORT/ (or :$((STATUS_PORT + 1)) when the second control plane leads)"
for z in $(seq 0 $((ZONES - 1))); do
    zone="$(printf "\\$(printf '%03o' $((97 + z)))")"
    echo "zone $zone: bootstrap ${BOOTSTRAP[$zone]}   client.id zone_id=$zone   (e.g. kcat -b ${BOOTSTRAP[$zone]%%,*} -X client.id=zone_id=$zone -L)"
done
echo "logs in $RUN; Ctrl-C stops all"
wait -n "${pids[@]}" || true
echo "a process exited; see $RUN" >&2
