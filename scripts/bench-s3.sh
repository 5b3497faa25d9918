#!/usr/bin/env bash
# Sluice on S3 + etcd, side by side with Tansu 0.6 on the same S3 server, through
# sluice-s3-proxy with each latency profile: acks=all at a fixed 50 MB/s (50,000 records/s of
# 1000 bytes), one consumer. Reports throughput, produce and end-to-end latency, PUTs/GB and
# metadata transactions/GB (sluice-bench, with Sluice's /metrics). Results land in
# bench-results/<timestamp>-s3/.
#
#   scripts/bench-s3.sh                                  # profiles s3-express and s3-standard
#   PROFILES=s3-standard INTERVALS="50 100" scripts/bench-s3.sh
#   HEDGE="0 95" scripts/bench-s3.sh                     # hedging off and at p95
#   EXTRA="--wal-flush-bytes 8388608" scripts/bench-s3.sh # more data plane flags
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
DURATION="${DURATION:-20}"
PROFILES="${PROFILES:-s3-express s3-standard}"
INTERVALS="${INTERVALS:-}"   # flush intervals (ms) to try; empty: the S3 default
HEDGE="${HEDGE:-}"           # hedge percentiles to try; empty: the default
RATE="${RATE:-50000}"
EXTRA="${EXTRA:-}"           # more data plane flags for every Sluice run
TANSU="${TANSU:-1}"
OUT="${OUT:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)-s3}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
bash scripts/etcd.sh --install
bash scripts/s3-server.sh --install
cargo build --release --bins
BIN="$CARGO_TARGET_DIR/release"
KPORT=29092 RPORT=29093 DMPORT=29094 CMPORT=29095 TPORT=29192
S3PORT=29100 PROXYPORT=29101 ETCDPORT=29102
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
trap stop_all EXIT
export AWS_ACCESS_KEY_ID=sluice AWS_SECRET_ACCESS_KEY=sluice-secret-key

start_backends() { # start_backends PROFILE: s3s-fs, the proxy with PROFILE, etcd; fresh data
    local s3data
    s3data="$(mktemp -d /tmp/sluice-bench-s3.XXXXXX)"
    data_dirs+=("$s3data")
    mkdir -p "$s3data/sluice" "$s3data/tansu"
    "$HOME/.cache/sluice-tools/bin/s3s-fs" --host 127.0.0.1 --port "$S3PORT" --access-key "$AWS_ACCESS_KEY_ID" \
        --secret-key "$AWS_SECRET_ACCESS_KEY" "$s3data" >"$OUT/s3s-fs.log" 2>&1 &
    pids+=($!)
    "$BIN/sluice-s3-proxy" --listen "127.0.0.1:$PROXYPORT" --upstream "127.0.0.1:$S3PORT" --profile "$1" \
        >"$OUT/proxy-$1.log" 2>&1 &
    pids+=($!)
    bash scripts/etcd.sh "$ETCDPORT" >"$OUT/etcd.log" 2>&1 &
    pids+=($!)
    wait_port "$S3PORT"
    wait_port "$PROXYPORT"
    wait_port "$ETCDPORT"
}

start_sluice_s3() { # start_sluice_s3 [data plane flags...]
    "$BIN/sluice-controlplane" --metadata "etcd://127.0.0.1:$ETCDPORT/bench" --data-dir "$OUT/cp" \
        --rpc-listen "127.0.0.1:$RPORT" --metrics-listen "127.0.0.1:$CMPORT" --object-store s3://sluice/wal \
        --s3-endpoint "http://127.0.0.1:$PROXYPORT" >"$OUT/sluice-controlplane.log" 2>&1 &
    pids+=($!)
    wait_port "$RPORT"
    "$BIN/sluice-dataplane" --data-dir "$OUT/dp" --controlplane "127.0.0.1:$RPORT" --listen "127.0.0.1:$KPORT" \
        --cores 2 --metrics-listen "127.0.0.1:$DMPORT" --object-store s3://sluice/wal \
        --s3-endpoint "http://127.0.0.1:$PROXYPORT" "$@" >"$OUT/sluice-dataplane.log" 2>&1 &
    pids+=($!)
    wait_port "$KPORT"
    wait_port "$DMPORT"
}

etcd_footprint() { # keys and bytes Sluice keeps in etcd after a run, with and without the
    # committed-object records (which expire ten minutes after their commit)
    ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCDPORT" get --prefix /bench -w json | python3 -c '
import base64, json, sys
kvs = json.load(sys.stdin).get("kvs", [])
size = lambda kv: len(base64.b64decode(kv["key"])) + len(base64.b64decode(kv.get("value", "")))
dedup = [kv for kv in kvs if b"/wal/objects/" in base64.b64decode(kv["key"])]
print(f"== etcd after {sys.argv[1]}: {len(kvs)} keys, {sum(map(size, kvs))} bytes; "
      f"without the expiring committed-object records: {len(kvs) - len(dedup)} keys, "
      f"{sum(map(size, kvs)) - sum(map(size, dedup))} bytes")' "$1" | tee -a "$OUT/etcd-footprint.txt"
}

WORKLOAD=(--preset fixed-rate --rate "$RATE" --record-size 1000 --partitions 6 --duration "$DURATION" --warmup 5)
for profile in $PROFILES; do
    for interval in ${INTERVALS:-default}; do
        for hedge in ${HEDGE:-default}; do
            flags=()
            [ "$interval" != default ] && flags+=(--wal-flush-interval-ms "$interval")
            [ "$hedge" != default ] && flags+=(--s3-hedge-percentile "$hedge")
            # shellcheck disable=SC2206 # EXTRA is a list of flags
            flags+=($EXTRA)
            echo "== Sluice on S3 ($profile) + etcd, flush interval $interval, hedge $hedge"
            start_backends "$profile"
            start_sluice_s3 "${flags[@]}"
            label="sluice-$profile-interval$interval-hedge$hedge"
            bench_sluice "${WORKLOAD[@]}" --label "$label" || echo "== run failed (exit $?)"
            etcd_footprint "$label"
            stop_all
        done
    done
    if [ "$TANSU" = 1 ]; then
        echo "== Tansu 0.6 on the same S3 server ($profile)"
        start_backends "$profile"
        scripts/peer-tansu.sh s3-endpoint "$TPORT" "http://127.0.0.1:$PROXYPORT" >"$OUT/tansu-$profile.log" 2>&1 &
        pids+=($!)
        wait_port "$TPORT"
        "$BIN/sluice-bench" --bootstrap "127.0.0.1:$TPORT" --out "$OUT" "${WORKLOAD[@]}" --label "tansu-$profile" \
            || echo "== peer run failed (exit $?); its report is above"
        stop_all
    fi
done
echo "results in $OUT (summary.jsonl)"
