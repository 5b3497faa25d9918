#!/usr/bin/env bash
# The compaction figures of BENCHMARKS.md ("Compaction into Iceberg tables"), on one machine:
# a single-node Sluice with its objects in a local directory and its metadata in etcd (so index
# entries and metadata bytes can be counted), a data plane on one core, compaction on one thread.
#
#   scripts/bench-compaction.sh                 # results in bench-results/compaction/
#   RATE=10000 DURATION=30 BACKLOG=300000 OUT=dir scripts/bench-compaction.sh
#   KEEP_DATA=1 scripts/bench-compaction.sh     # a failed run leaves its data directory
#
# 1. produce p99 at RATE records/s of 1 KiB without compaction, then again while compaction
#    turns that backlog and the new records into Parquet (one thread);
# 2. index entries and metadata bytes per GB in etcd before and after that compaction;
# 3. compaction MB/s per control-plane thread, and Parquet bytes against WAL bytes;
# 4. cold fetch MB/s of a BACKLOG-record topic from WAL objects and from Parquet (the data plane
#    restarts before consumers start, so nothing is cached), for the benchmark's records and for
#    text-like ones (`--payload text`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
BIN="${BIN:-$CARGO_TARGET_DIR/release}"
OUT="${OUT:-bench-results/compaction}"
RATE="${RATE:-10000}" DURATION="${DURATION:-30}" BACKLOG="${BACKLOG:-300000}"
KPORT=29300 RPORT=29301 DMPORT=29302 CMPORT=29303 TPORT=29304 EPORT=29305
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
mkdir -p "$OUT"
: >"$OUT/summary.jsonl"
DATA="$(mktemp -d /tmp/sluice-compaction.XXXXXX)"
data_dirs+=("$DATA")
cleanup() {
    local rc=$?
    [ -f "$DATA/dp.pid" ] && kill "$(cat "$DATA/dp.pid")" 2>/dev/null
    if [ "$rc" -ne 0 ] && [ -n "${KEEP_DATA:-}" ]; then
        # Keep what a failed run left (objects, etcd's namespace is in its own data dir) to look at.
        data_dirs=()
        echo "data kept in $DATA" >&2
    fi
    stop_all
}
trap cleanup EXIT

bash scripts/etcd.sh "$EPORT" >"$OUT/etcd.log" 2>&1 &
pids+=($!)
wait_port "$EPORT"
NS="compaction$$"
OFF=(--compaction-min-bytes 1099511627776 --compaction-max-age-ms 100000000000)
ON=(--compaction-min-bytes $((8 << 20)) --compaction-interval-ms 1000)

metric() { curl -s "http://127.0.0.1:$CMPORT/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }

CP=""
start_cp() {
    if [ -n "$CP" ]; then kill "$CP"; wait "$CP" 2>/dev/null || true; fi
    "$BIN/sluice-controlplane" --data-dir "$DATA/cp" --metadata "etcd://127.0.0.1:$EPORT/$NS" \
        --rpc-listen "127.0.0.1:$RPORT" --metrics-listen "127.0.0.1:$CMPORT" --object-store "file://$DATA/dp/objects" \
        --compaction-threads 1 "$@" >>"$OUT/controlplane.log" 2>&1 &
    CP=$!
    pids+=("$CP")
    wait_port "$CMPORT"
}

# The data plane is (re)started by a script of its own, which --before-consume also runs.
cat >"$DATA/restart-dp.sh" <<EOF
#!/usr/bin/env bash
[ -f "$DATA/dp.pid" ] && { kill "\$(cat "$DATA/dp.pid")" 2>/dev/null; while kill -0 "\$(cat "$DATA/dp.pid")" 2>/dev/null; do sleep 0.1; done; }
for _ in \$(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$KPORT") 2>/dev/null || break; sleep 0.1; done
"$BIN/sluice-dataplane" --data-dir "$DATA/dp" --controlplane 127.0.0.1:$RPORT --listen 127.0.0.1:$KPORT --cores 1 \\
    --metrics-listen 127.0.0.1:$DMPORT >>"$OUT/dataplane.log" 2>&1 &
echo \$! >"$DATA/dp.pid"
for _ in \$(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$KPORT") 2>/dev/null && exit 0; sleep 0.1; done
exit 1
EOF
# Waits until compaction has nothing left to do (no rows written for 5 s), then restarts the
# data plane.
cat >"$DATA/compacted-then-restart-dp.sh" <<EOF
#!/usr/bin/env bash
last=-1; still=0
while [ "\$still" -lt 5 ]; do
    now=\$(curl -s http://127.0.0.1:$CMPORT/metrics | awk '\$1 == "sluice_compaction_rows_total" { print \$2 }')
    if [ "\$now" = "\$last" ]; then still=\$((still + 1)); else still=0; last=\$now; fi
    sleep 1
done
exec bash "$DATA/restart-dp.sh"
EOF
chmod +x "$DATA"/*.sh

etcd_footprint() { # label: index entries and metadata bytes in etcd
    ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$EPORT" get --prefix "/$NS" -w json | python3 -c '
import base64, json, sys
kvs = json.load(sys.stdin).get("kvs", [])
size = lambda kv: len(base64.b64decode(kv["key"])) + len(base64.b64decode(kv.get("value", "")))
index = [kv for kv in kvs if b"/index/" in base64.b64decode(kv["key"])]
print(f"{sys.argv[1]}: {len(index)} index entries ({sum(map(size, index))} bytes); {len(kvs)} keys, {sum(map(size, kvs))} bytes in all")
' "$1" | tee -a "$OUT/figures.txt"
}

: >"$OUT/figures.txt"
start_cp "${OFF[@]}"
bash "$DATA/restart-dp.sh"
common=(--partitions 4 --record-size 1024 --consumers 1 --warmup 2)

echo "== 1a. produce at $RATE rec/s, no compaction" | tee -a "$OUT/figures.txt"
bench_sluice --label produce-no-compaction --topic lake-a --rate "$RATE" --duration "$DURATION" "${common[@]}"
written=$(curl -s "http://127.0.0.1:$DMPORT/metrics" | awk '$1 ~ /^sluice_wal_object_bytes_total({|$)/ { s += $2 } END { print s }')
echo "WAL bytes written: $written" | tee -a "$OUT/figures.txt"
etcd_footprint "before compaction"

echo "== 1b. produce at $RATE rec/s while compaction runs (one thread) on that backlog and these records" | tee -a "$OUT/figures.txt"
start_cp "${ON[@]}"
bench_sluice --label produce-during-compaction --topic lake-b --rate "$RATE" --duration "$DURATION" "${common[@]}"
bash "$DATA/compacted-then-restart-dp.sh"
etcd_footprint "after compaction (what is left below 8 MiB per partition stays WAL)"
wal=$(metric sluice_compaction_wal_bytes_total) pq=$(metric sluice_compaction_parquet_bytes_total) ms=$(metric sluice_compaction_write_ms_total)
python3 -c "import sys; w, p, ms = map(float, sys.argv[1:]); print(f'compaction: {w/1e6:.1f} MB of WAL chunks in {ms/1000:.1f} s on one thread = {w/1e6/(ms/1000):.1f} MB/s per core; Parquet {p/1e6:.1f} MB = {p/w:.3f} of WAL (benchmark records)')" \
    "$wal" "$pq" "$ms" | tee -a "$OUT/figures.txt"

echo "== 2. cold fetch of $BACKLOG records: from WAL objects, then from Parquet" | tee -a "$OUT/figures.txt"
start_cp "${OFF[@]}"
bench_sluice --label cold-fetch-wal --topic lake-c --backlog "$BACKLOG" --before-consume "bash $DATA/restart-dp.sh" "${common[@]}"
start_cp --compaction-min-bytes 1 --compaction-interval-ms 1000
bench_sluice --label cold-fetch-parquet --topic lake-d --backlog "$BACKLOG" --before-consume "bash $DATA/compacted-then-restart-dp.sh" "${common[@]}"

echo "== 3. text-like records: Parquet bytes against WAL bytes, cold fetch from Parquet" | tee -a "$OUT/figures.txt"
wal0=$(metric sluice_compaction_wal_bytes_total) pq0=$(metric sluice_compaction_parquet_bytes_total)
bench_sluice --label cold-fetch-parquet-text --topic lake-e --payload text --backlog "$BACKLOG" \
    --before-consume "bash $DATA/compacted-then-restart-dp.sh" "${common[@]}"
wal1=$(metric sluice_compaction_wal_bytes_total) pq1=$(metric sluice_compaction_parquet_bytes_total)
python3 -c "import sys; a, b, c, d = map(float, sys.argv[1:]); print(f'text-like records: WAL {(b-a)/1e6:.1f} MB -> Parquet {(d-c)/1e6:.1f} MB = {(d-c)/(b-a):.3f} of WAL')" \
    "$wal0" "$wal1" "$pq0" "$pq1" | tee -a "$OUT/figures.txt"

python3 - "$OUT/summary.jsonl" <<'PY' | tee -a "$OUT/figures.txt"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["label"].startswith("produce"):
        print(f"{r['label']}: {r['records_per_sec']:.0f} rec/s, produce p50/p99/p999 "
              f"{r['produce_ms_p50_p90_p99_p999_max'][0]:.1f}/{r['produce_ms_p50_p90_p99_p999_max'][2]:.1f}/{r['produce_ms_p50_p90_p99_p999_max'][3]:.1f} ms")
    else:
        print(f"{r['label']}: {r['consumed']} records read at {r['mb_per_sec']:.1f} MB/s ({r['consumed_per_sec']:.0f} rec/s)")
PY
