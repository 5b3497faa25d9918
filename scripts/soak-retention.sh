#!/usr/bin/env bash
# Retention and garbage collection under steady produce: a single node with a topic whose
# retention.ms is one minute takes records at a fixed rate for MINUTES; every 30 s the script
# samples what the system keeps (object-store bytes, files, metadata keys and store size) from
# outside Sluice. With retention working, every column levels off instead of growing.
#
#   scripts/soak-retention.sh local|s3 [OUT_DIR]
#
# `local`: local directory + redb. `s3`: s3s-fs + etcd (both started here, data in a temp dir).
# Environment: MINUTES (15), RATE (2000 records/s of 1 KiB), RETENTION_MS (60000), CORES (2),
# BIN (~/.cache/sluice-target/release), PORT_BASE (39000: seven ports from it),
# VENV (~/.cache/sluice-venv/.venv, for the admin client that creates the topic); the control
# plane's SLUICE_* variables pass through (SLUICE_COMPACTION_MAX_AGE_MS=20000 makes compaction
# turn the WAL into the topic's table before retention lets it go).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BACKEND="${1:?usage: scripts/soak-retention.sh local|s3 [OUT_DIR]}"
OUT="${2:-$ROOT/bench-results/soak-$BACKEND-$(date -u +%Y%m%dT%H%M%SZ)}"
MINUTES="${MINUTES:-15}" RATE="${RATE:-2000}" RETENTION_MS="${RETENTION_MS:-60000}" CORES="${CORES:-2}"
BIN="${BIN:-$HOME/.cache/sluice-target/release}" VENV="${VENV:-$HOME/.cache/sluice-venv/.venv}"
P="${PORT_BASE:-39000}"
KPORT=$P RPORT=$((P + 1)) CMPORT=$((P + 2)) DMPORT=$((P + 3)) EPORT=$((P + 4)) EPEER=$((P + 5)) SPORT=$((P + 6))
mkdir -p "$OUT"
DATA="$(mktemp -d /tmp/sluice-soak.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$DATA"
}
trap cleanup EXIT
# wait_port, shared with the benchmark scripts.
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"

meta=() store=() cp_store=()
case "$BACKEND" in
local)
    OBJECTS="$DATA/dp/objects"
    cp_store=(--object-store "file://$DATA/dp/objects")
    ;;
s3)
    export AWS_ACCESS_KEY_ID=soak AWS_SECRET_ACCESS_KEY=soak-secret-key
    mkdir -p "$DATA/s3/sluice"
    "${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice-tools}/bin/s3s-fs" --host 127.0.0.1 --port "$SPORT" \
        --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$DATA/s3" >"$OUT/s3s-fs.log" 2>&1 &
    pids+=($!)
    etcd --name soak --data-dir "$DATA/etcd" --listen-client-urls "http://127.0.0.1:$EPORT" \
        --advertise-client-urls "http://127.0.0.1:$EPORT" --listen-peer-urls "http://127.0.0.1:$EPEER" \
        --initial-advertise-peer-urls "http://127.0.0.1:$EPEER" --initial-cluster "soak=http://127.0.0.1:$EPEER" \
        --max-txn-ops 16384 --max-request-bytes 16777216 --log-level warn >"$OUT/etcd.log" 2>&1 &
    pids+=($!)
    wait_port "$SPORT"
    wait_port "$EPORT"
    meta=(--metadata "etcd://127.0.0.1:$EPORT")
    store=(--object-store s3://sluice/soak --s3-endpoint "http://127.0.0.1:$SPORT")
    cp_store=("${store[@]}")
    OBJECTS="$DATA/s3/sluice"
    ;;
*) echo "backend must be local or s3" >&2; exit 2 ;;
esac

"$BIN/sluice-controlplane" --data-dir "$DATA/cp" --rpc-listen "127.0.0.1:$RPORT" --metrics-listen "127.0.0.1:$CMPORT" \
    --retention-check-interval-ms 10000 --gc-interval-ms 5000 --gc-grace-ms 30000 "${meta[@]}" "${cp_store[@]}" >"$OUT/controlplane.log" 2>&1 &
pids+=($!)
"$BIN/sluice-dataplane" --data-dir "$DATA/dp" --controlplane "127.0.0.1:$RPORT" --listen "127.0.0.1:$KPORT" \
    --cores "$CORES" --metrics-listen "127.0.0.1:$DMPORT" "${store[@]}" >"$OUT/dataplane.log" 2>&1 &
pids+=($!)
wait_port "$KPORT"

"$VENV/bin/python" - "$KPORT" "$RETENTION_MS" <<'EOF'
import sys
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{sys.argv[1]}"})
admin.create_topics([NewTopic("soak", 4, 1, config={"retention.ms": sys.argv[2]})])["soak"].result(30)
EOF

"$BIN/sluice-bench" --bootstrap "127.0.0.1:$KPORT" --topic soak --rate "$RATE" --record-size 1024 --consumers 0 \
    --duration $((MINUTES * 60)) --warmup 0 --label "soak-$BACKEND" --out "$OUT" >"$OUT/bench.log" 2>&1 &
bench=$!
pids+=($bench)

# A metric's value summed over its labels (the data plane labels each shard's).
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%d", s }'; }
meta_size() {
    if [ "$BACKEND" = local ]; then stat -c %s "$DATA/cp/meta.redb"; else
        ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$EPORT" endpoint status -w json |
            sed 's/.*"dbSize":\([0-9]*\).*/\1/'
    fi
}
meta_keys() {
    if [ "$BACKEND" = local ]; then echo -; else
        ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$EPORT" get "" --prefix --keys-only --limit 1 -w json |
            sed 's/.*"count":\([0-9]*\).*/\1/'
    fi
}
printf "seconds\tproduced_MB\tobject_MB\tallocated_MB\tobject_files\tmeta_keys\tmeta_store_MB\tlog_start_moves\tobjects_released\tobjects_deleted\ttable_files\ttable_MB\tcompacted_files\n" |
    tee "$OUT/soak.tsv"
start=$(date +%s)
while kill -0 "$bench" 2>/dev/null; do
    sleep 30
    t=$(($(date +%s) - start))
    produced=$(metric "$DMPORT" sluice_produce_bytes_total)
    # Objects come and go while these run: a file gone before du reaches it is not an error.
    bytes=$({ du -sb "$OBJECTS" 2>/dev/null || true; } | cut -f1)
    allocated=$({ du -s -B1 "$OBJECTS" 2>/dev/null || true; } | cut -f1)
    files=$({ find "$OBJECTS" -type f 2>/dev/null || true; } | wc -l)
    # The topic's table: its Parquet files and Iceberg metadata, under tables/.
    table=$({ find "$OBJECTS" -path '*/tables/*' -type f -printf '%s\n' 2>/dev/null || true; } | awk '{ n++; s += $1 } END { printf "%d\t%.1f", n, s / 1e6 }')
    printf "%d\t%.0f\t%.1f\t%.1f\t%d\t%s\t%.1f\t%s\t%s\t%s\t%s\t%s\n" "$t" "$((produced / 1000000))" "$(echo "$bytes / 1000000" | bc -l)" \
        "$(echo "$allocated / 1000000" | bc -l)" "$files" "$(meta_keys)" "$(echo "$(meta_size) / 1000000" | bc -l)" \
        "$(metric "$CMPORT" sluice_log_start_moves_total)" "$(metric "$CMPORT" sluice_wal_objects_released_total)" \
        "$(metric "$CMPORT" sluice_wal_objects_deleted_total)" "$table" "$(metric "$CMPORT" sluice_compaction_files_total)" |
        tee -a "$OUT/soak.tsv"
done
wait "$bench"
echo "samples in $OUT/soak.tsv, bench report in $OUT" >&2
