#!/usr/bin/env bash
# Sluice's one test command: installs what the tests need, checks formatting and lints, builds,
# runs the Rust tests and the end-to-end suite (tests/, pytest). Safe to re-run; a second run skips installs already done.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -k confluent    # extra arguments go to pytest
#
# Environment:
#   CARGO_TARGET_DIR   cargo target dir (default ~/.cache/sluice-target)
#   SLUICE_BIN_DIR     where the e2e tests find the binaries (default $CARGO_TARGET_DIR/release)
#   SLUICE_VENV        directory holding the Python virtualenv .venv (default ~/.cache/sluice-venv)
#   SLUICE_NODE_DIR    directory holding kafkajs's node_modules (default ~/.cache/sluice-node)
#   SLUICE_TOOLS_DIR   where servers the tests start are installed (default ~/.cache/sluice-tools)
#   PYTEST_TIMEOUT     per-test timeout in seconds (default 300; some tests set their own)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
export SLUICE_BIN_DIR="${SLUICE_BIN_DIR:-$CARGO_TARGET_DIR/release}"
VENV="${SLUICE_VENV:-$HOME/.cache/sluice-venv}/.venv"
NODE_DIR="${SLUICE_NODE_DIR:-$HOME/.cache/sluice-node}"
PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-300}"

log() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root apt-get update
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# --- system packages --------------------------------------------------------------------------
if ! command -v kcat >/dev/null 2>&1; then
    log "installing kcat"
    apt_install kcat
fi
if ! command -v chromium >/dev/null 2>&1; then
    log "installing chromium (the status page test renders the page in headless Chromium)"
    apt_install chromium
fi
if ! command -v protoc >/dev/null 2>&1; then
    log "installing protobuf-compiler (etcd-client's build compiles etcd's protocol)"
    apt_install protobuf-compiler
fi
if ! command -v etcd >/dev/null 2>&1; then
    log "installing etcd-server"
    apt_install etcd-server
fi
if ! command -v python3 >/dev/null 2>&1; then
    log "installing python3"
    apt_install python3 python3-venv
fi
if [ ! -x "$VENV/bin/python" ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    log "installing python3-venv"
    apt_install python3-venv
fi

# --- Python virtualenv --------------------------------------------------------------------------
REQ="$ROOT/tests/requirements.txt"
STAMP="$VENV/.sluice-requirements.sha256"
REQ_HASH="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null || true)" != "$REQ_HASH" ]; then
    log "creating/updating virtualenv $VENV"
    mkdir -p "$(dirname "$VENV")"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r "$REQ"
    echo "$REQ_HASH" > "$STAMP"
else
    log "virtualenv $VENV is up to date"
fi

# --- kafkajs (Node.js) ---------------------------------------------------------------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "installing nodejs and npm"
    apt_install nodejs npm
fi
PKG="$ROOT/tests/kafkajs/package.json"
NODE_STAMP="$NODE_DIR/.sluice-package.sha256"
PKG_HASH="$(sha256sum "$PKG" | cut -d' ' -f1)"
if [ ! -d "$NODE_DIR/node_modules/kafkajs" ] || [ "$(cat "$NODE_STAMP" 2>/dev/null || true)" != "$PKG_HASH" ]; then
    log "installing kafkajs into $NODE_DIR"
    mkdir -p "$NODE_DIR"
    cp "$PKG" "$NODE_DIR/package.json"
    (cd "$NODE_DIR" && npm install --no-audit --no-fund --silent)
    echo "$PKG_HASH" > "$NODE_STAMP"
else
    log "kafkajs in $NODE_DIR is up to date"
fi
export SLUICE_NODE_MODULES="$NODE_DIR/node_modules"

# --- Rust build and unit/integration tests ------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }

# The S3-compatible server the S3 tests (cargo's and pytest's) run against.
log "s3s-fs (S3-compatible server) in ${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice-tools}"
bash "$ROOT/scripts/s3-server.sh" --install
# The Iceberg REST catalog server the lake tests keep tables in (besides the SQLite catalog).
log "rustberg (Iceberg REST catalog) in ${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice-tools}"
bash "$ROOT/scripts/rest-catalog.sh" --install

log "cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
log "cargo build --release --bins (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --release --bins
log "cargo test --workspace --release"
cargo test --workspace --release

# --- end-to-end suite ---------------------------------------------------------------------------
log "pytest tests (per-test timeout ${PYTEST_TIMEOUT}s, binaries from $SLUICE_BIN_DIR)"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest tests -v --timeout="$PYTEST_TIMEOUT" "$@"
