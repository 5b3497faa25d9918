# Shared by the benchmark scripts (sourced, not run): starting a single-node Sluice on fixed
# ports from the binaries in $BIN, running sluice-bench against it, and stopping everything
# with its data. The caller sets ROOT, BIN, OUT and the ports KPORT RPORT DMPORT CMPORT TPORT,
# and traps stop_all on EXIT.
# shellcheck shell=bash

pids=()
data_dirs=()
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
    # Each run writes gigabytes; keep none of it.
    for d in "${data_dirs[@]}"; do rm -rf "$d"; done
    data_dirs=()
    # The deletion's journal commit (and, on a disk mounted with `discard`, its discards)
    # belongs to this run, not to the next one.
    sync
    # A killed data plane's io_uring lets go of its listeners a little later; the next start
    # must not mistake a lingering listener for its own.
    for port in $KPORT $DMPORT $TPORT; do
        for _ in $(seq 1 100); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
            sleep 0.1
        done
    done
}

wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened" >&2
    return 1
}

start_sluice() { # start_sluice CORES [extra data plane flags...]
    local cores="$1"
    shift
    local data
    data="$(mktemp -d /tmp/sluice-bench-data.XXXXXX)"
    data_dirs+=("$data")
    "$BIN/sluice-controlplane" --data-dir "$data" --rpc-listen "127.0.0.1:$RPORT" \
        --metrics-listen "127.0.0.1:$CMPORT" >"$OUT/sluice-controlplane.log" 2>&1 &
    pids+=($!)
    "$BIN/sluice-dataplane" --data-dir "$data" --controlplane "127.0.0.1:$RPORT" --listen "127.0.0.1:$KPORT" \
        --cores "$cores" --metrics-listen "127.0.0.1:$DMPORT" "$@" >"$OUT/sluice-dataplane.log" 2>&1 &
    pids+=($!)
    wait_port "$KPORT"
    wait_port "$DMPORT"
}

METRICS="http://127.0.0.1:$DMPORT/metrics,http://127.0.0.1:$CMPORT/metrics"
bench_sluice() { "$BIN/sluice-bench" --bootstrap "127.0.0.1:$KPORT" --metrics "$METRICS" --out "$OUT" "$@"; }
last_rate() { tail -1 "$OUT/summary.jsonl" | sed 's/.*"records_per_sec":\([0-9.]*\).*/\1/' | cut -d. -f1; }
