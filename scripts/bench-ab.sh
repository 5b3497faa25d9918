#!/usr/bin/env bash
# Before/after measurement of a change: BENCHMARKS.md's workloads (a) throughput and (b) fixed
# rate, run alternately with two sets of binaries in one run (A, B, A, B, ...), so both see the
# same hour of this noisy VM. Results land in bench-results/ab-<timestamp>/ with a table.
#
#   BIN_A=~/.cache/base-target/release BIN_B=~/.cache/sluice-target/release scripts/bench-ab.sh
#
# Environment: PAIRS (3), DURATION (10 s per run), RATE (records/s of (b); default half of A's
# first (a) run), CORES (2), WORKLOADS ("a b"; "b" with RATE set runs only the fixed rate).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${BIN_A:?set BIN_A to the 'before' binaries' directory}" "${BIN_B:?set BIN_B to the 'after' binaries' directory}"
PAIRS="${PAIRS:-3}" WORKLOADS="${WORKLOADS:-a b}" DURATION="${DURATION:-10}" CORES="${CORES:-2}"
OUT="${OUT:-bench-results/ab-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
KPORT=29092 RPORT=29093 DMPORT=29094 CMPORT=29095 TPORT=29192
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
trap stop_all EXIT

run() { # run A|B LABEL sluice-bench flags...
    local side="$1" label="$2"
    shift 2
    BIN="$BIN_A"
    [ "$side" = B ] && BIN="$BIN_B"
    start_sluice "$CORES"
    bench_sluice --duration "$DURATION" --label "$label-$side" "$@"
    stop_all
}

for pair in $(seq 1 "$PAIRS"); do
    [[ " $WORKLOADS " == *" a "* ]] || break
    for side in A B; do
        run "$side" "a-pair$pair" --preset throughput
        if [ -z "${RATE:-}" ]; then RATE=$(( $(last_rate) / 2 )); fi
    done
done
for pair in $(seq 1 "$PAIRS"); do
    [[ " $WORKLOADS " == *" b "* ]] || break
    for side in A B; do
        run "$side" "b-pair$pair" --preset fixed-rate --rate "$RATE"
    done
done
python3 - "$OUT/summary.jsonl" <<'PY' | tee "$OUT/ab.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| run | records/s | MB/s | produce p50 / p99 / p99.9 ms | e2e p50 / p99 / p99.9 ms |")
print("|---|---:|---:|---|---|")
for r in rows:
    fmt = lambda k: " / ".join("%.1f" % v for v in (r[k][0], r[k][2], r[k][3]))
    print(f"| {r['label']} | {r['records_per_sec']:,.0f} | {r['mb_per_sec']:.1f} | "
          f"{fmt('produce_ms_p50_p90_p99_p999_max')} | {fmt('e2e_ms_p50_p90_p99_p999_max')} |")
PY
echo "results in $OUT"
