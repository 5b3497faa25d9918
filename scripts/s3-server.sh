#!/usr/bin/env bash
# An S3-compatible server for Sluice on this machine: s3s-fs (crates.io), which keeps each
# object as a file and checks SigV4 signatures. Installs it on first use (cargo install, into
# $SLUICE_TOOLS_DIR, default ~/.cache/sluice-tools).
#
#   scripts/s3-server.sh --install        # install only
#   scripts/s3-server.sh [PORT]           # start on PORT (default: a free one), data in a temp
#                                         # dir, bucket "sluice"; prints the endpoint; Ctrl-C stops
#
# Environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (default sluice / sluice-secret-key).
set -euo pipefail

TOOLS_DIR="${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice-tools}"
S3S_VERSION=0.14.1 # the newest that builds with the pinned toolchain
EXE="$TOOLS_DIR/bin/s3s-fs"

if [ ! -x "$EXE" ] || ! "$EXE" --version 2>/dev/null | grep -q "$S3S_VERSION"; then
    echo "==> installing s3s-fs $S3S_VERSION into $TOOLS_DIR" >&2
    cargo install s3s-fs --version "$S3S_VERSION" --features binary --locked \
        --root "$TOOLS_DIR" --target-dir "$TOOLS_DIR/target" >&2
fi
[ "${1:-}" = "--install" ] && exit 0

PORT="${1:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
ROOT="$(mktemp -d -t sluice-s3.XXXXXX)"
mkdir -p "$ROOT/sluice"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-sluice}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-sluice-secret-key}"
echo "S3 endpoint http://127.0.0.1:$PORT  bucket sluice  data $ROOT" >&2
echo "  AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY" >&2
exec "$EXE" --host 127.0.0.1 --port "$PORT" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$ROOT"
