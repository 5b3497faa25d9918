#!/usr/bin/env bash
# An Apache Iceberg REST catalog for Sluice's tables on this machine: Rustberg (crates.io), a
# REST catalog server keeping its own records in a redb file. Installs it on first use (cargo
# install, into $SLUICE_TOOLS_DIR, default ~/.cache/sluice-tools).
#
#   scripts/rest-catalog.sh --install            # install only
#   scripts/rest-catalog.sh WAREHOUSE [PORT]     # start on PORT (default 8181) with the tables'
#                                                # files in WAREHOUSE, the object store Sluice
#                                                # writes to (file:///DIR or s3://BUCKET[/PREFIX]);
#                                                # prints the URI and token; Ctrl-C stops
#
# Environment: SLUICE_CATALOG_TOKEN (the bearer token it accepts; default: a fresh random one),
# RUSTBERG_DATA (its records; default a temp dir), and for an s3:// warehouse SLUICE_S3_ENDPOINT,
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
set -euo pipefail

TOOLS_DIR="${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice-tools}"
RUSTBERG_VERSION=0.3.0
EXE="$TOOLS_DIR/bin/rustberg"

if [ ! -x "$EXE" ] || ! "$EXE" --version 2>/dev/null | grep -q "$RUSTBERG_VERSION"; then
    echo "==> installing rustberg $RUSTBERG_VERSION into $TOOLS_DIR" >&2
    cargo install rustberg --version "$RUSTBERG_VERSION" --locked --no-default-features --features cli,storage-s3 \
        --root "$TOOLS_DIR" --target-dir "$TOOLS_DIR/rustberg-target" >&2
fi
[ "${1:-}" = "--install" ] && exit 0

WAREHOUSE="${1:?usage: scripts/rest-catalog.sh WAREHOUSE [PORT] (or --install)}"
PORT="${2:-8181}"
DATA="${RUSTBERG_DATA:-$(mktemp -d -t sluice-rest-catalog.XXXXXX)}"
mkdir -p "$DATA"
export RUSTBERG_SLUICE_KEY="${SLUICE_CATALOG_TOKEN:-rb_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
# Sluice names a table's directory by its topic id, so table locations may be anywhere in the
# warehouse; one admin key; plain HTTP (put TLS in front of it off this machine).
{
    printf '[server]\nhost = "127.0.0.1"\nport = %s\n' "$PORT"
    printf '[server.auth]\napi_key_enabled = true\n'
    printf '[[server.auth.api_keys]]\nname = "sluice"\ntenant = "default"\nroles = ["admin"]\nkey_env = "RUSTBERG_SLUICE_KEY"\n'
    printf '[tls]\nenabled = false\ninsecure_http = true\n'
    printf '[storage]\ncatalog_url = "file://%s/catalog"\nwarehouse_location = "%s"\nlocation_scope = "warehouse"\n' "$DATA" "$WAREHOUSE"
    if [ "${WAREHOUSE#s3://}" != "$WAREHOUSE" ]; then
        printf '[storage.properties]\n"s3.endpoint" = "%s"\n"s3.path-style-access" = "true"\n"s3.region" = "%s"\n' \
            "${SLUICE_S3_ENDPOINT:?set SLUICE_S3_ENDPOINT for an s3:// warehouse}" "${SLUICE_S3_REGION:-us-east-1}"
        printf '"s3.access-key-id" = "env:AWS_ACCESS_KEY_ID"\n"s3.secret-access-key" = "env:AWS_SECRET_ACCESS_KEY"\n'
    fi
    printf '[rate_limit]\nenabled = false\n'
} > "$DATA/rustberg.toml"
echo "REST catalog http://127.0.0.1:$PORT  warehouse $WAREHOUSE  records $DATA" >&2
echo "  sluice-controlplane --catalog http://127.0.0.1:$PORT   with SLUICE_CATALOG_TOKEN=$RUSTBERG_SLUICE_KEY" >&2
exec "$EXE" --config "$DATA/rustberg.toml" --insecure-http
