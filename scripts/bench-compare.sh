#!/usr/bin/env bash
# Runs the BENCHMARKS.md workloads against Sluice and, side by side on the same machine in the
# same run, against Tansu (memory:// and s3:// on a local S3 server), then measures the
# machine's own limits. Results land in bench-results/<timestamp>/ (summary.jsonl, .hgrm
# histograms, SVG latency plots, machine.txt).
#
#   scripts/bench-compare.sh                 # everything (about 5 minutes)
#   DURATION=20 scripts/bench-compare.sh     # longer measured windows
#   B_RUNS=5 scripts/bench-compare.sh        # more runs of Sluice at the fixed rate (b)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
DURATION="${DURATION:-10}"
B_RUNS="${B_RUNS:-3}"
OUT="${OUT:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cargo build --release --bins
BIN="$CARGO_TARGET_DIR/release"
BENCH="$BIN/sluice-bench"
KPORT=29092 RPORT=29093 DMPORT=29094 CMPORT=29095 TPORT=29192 S3PORT=29100
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
trap stop_all EXIT

start_tansu() { # start_tansu memory|s3
    scripts/peer-tansu.sh "$1" "$TPORT" "$S3PORT" >"$OUT/tansu-$1.log" 2>&1 &
    pids+=($!)
    wait_port "$TPORT"
}

# A peer run that loses or never delivers records is reported (sluice-bench exits non-zero) and
# the comparison goes on.
bench_tansu() { "$BENCH" --bootstrap "127.0.0.1:$TPORT" --out "$OUT" "$@" || echo "== peer run failed (exit $?); its report is above"; }

echo "== (a) throughput, (c) small records, (d) cores 1 vs 2: Sluice"
for cores in 2 1; do
    start_sluice "$cores"
    bench_sluice --preset throughput --duration "$DURATION" --label "a-sluice-cores$cores"
    [ "$cores" = 2 ] && RATE_A="$(last_rate)"
    [ "$cores" = 2 ] && bench_sluice --preset small-records --duration "$DURATION" --label "c-sluice-cores2"
    stop_all
done
HALF=$((RATE_A / 2))
echo "== (b) fixed rate at 50% of Sluice's (a): $HALF records/s, $B_RUNS runs (latency tails vary from run to run)"
for run in $(seq 1 "$B_RUNS"); do
    start_sluice 2
    bench_sluice --preset fixed-rate --rate "$HALF" --duration "$DURATION" --label "b-sluice-rate$HALF-run$run"
    stop_all
done
start_sluice 2
echo "== (e) fetch-only from the cache"
bench_sluice --preset fetch-only --backlog 200000 --label "e-sluice-cache"
stop_all
# A 16 MiB cache holds under a tenth of the 205 MB backlog, so nearly every byte comes from
# objects, but it does hold the rest of each chunk a fetch read (a 1 MiB cache, 512 KiB per
# shard, is smaller than one chunk: it thrashes and reads every byte about 3 times).
echo "== (e) fetch-only from objects (cold: 16 MiB cache)"
start_sluice 2 --cache-bytes 16777216
bench_sluice --preset fetch-only --backlog 200000 --label "e-sluice-cold"
stop_all

for mode in memory s3; do
    echo "== the same workloads against Tansu ($mode)"
    start_tansu "$mode"
    bench_tansu --preset throughput --duration "$DURATION" --label "a-tansu-$mode"
    bench_tansu --preset fixed-rate --rate "$HALF" --duration "$DURATION" --label "b-tansu-$mode-rate$HALF"
    bench_tansu --preset small-records --duration "$DURATION" --label "c-tansu-$mode"
    bench_tansu --preset fetch-only --backlog 200000 --label "e-tansu-$mode"
    stop_all
done

echo "== (f) the machine's own limits"
{
    echo "cores: $(nproc)  memory: $(free -g | awk '/Mem:/{print $2}') GiB  kernel: $(uname -r)"
    lscpu | grep -m1 'Model name' || true
    if command -v iperf3 >/dev/null; then
        iperf3 -s -p 29201 >/dev/null 2>&1 &
        iperf_server=$!
        wait_port 29201
        iperf3 -c 127.0.0.1 -p 29201 -t 5 | grep -E 'sender|receiver'
        kill "$iperf_server" 2>/dev/null || true
        wait "$iperf_server" 2>/dev/null || true
    fi
    if command -v fio >/dev/null; then
        for bs in 1m 4m; do
            fio --name=seqwrite-fsync --directory=/tmp --size=1g --bs="$bs" --rw=write --ioengine=sync \
                --fdatasync=1 --unlink=1 --output-format=json | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
w, s = j["write"], j["sync"]["lat_ns"]["percentile"]
print("fio sequential write, %s blocks, fdatasync after each: %.0f MB/s, fdatasync p50 %.2f ms p99 %.2f ms"
      % (sys.argv[1], w["bw_bytes"] / 1e6, s["50.000000"] / 1e6, s["99.000000"] / 1e6))' "$bs"
        done
    fi
} | tee "$OUT/machine.txt"
echo "results in $OUT"
