#!/usr/bin/env bash
# etcd for Sluice's metadata on this machine (Debian's etcd-server, installed on first use).
#
#   scripts/etcd.sh --install      # install only
#   scripts/etcd.sh [PORT]         # start a one-member etcd on 127.0.0.1:PORT (default: a free
#                                  # port), data in a temp dir; prints the endpoint; Ctrl-C stops
#
# A group commit writes a few keys per committed WAL object in one transaction, more than etcd's
# default --max-txn-ops (128) allows: Sluice's etcd runs with a higher limit.
set -euo pipefail

if ! command -v etcd >/dev/null 2>&1; then
    echo "==> installing etcd-server (Debian)" >&2
    as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
    as_root apt-get update >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >&2
fi
[ "${1:-}" = "--install" ] && exit 0

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT="${1:-$(free_port)}"
PEER="$(free_port)"
DATA="$(mktemp -d -t sluice-etcd.XXXXXX)"
echo "etcd endpoint 127.0.0.1:$PORT (use --metadata etcd://127.0.0.1:$PORT)  data $DATA" >&2
exec etcd --name sluice --data-dir "$DATA" \
    --listen-client-urls "http://127.0.0.1:$PORT" --advertise-client-urls "http://127.0.0.1:$PORT" \
    --listen-peer-urls "http://127.0.0.1:$PEER" --initial-advertise-peer-urls "http://127.0.0.1:$PEER" \
    --initial-cluster "sluice=http://127.0.0.1:$PEER" \
    --max-txn-ops 16384 --max-request-bytes 16777216 --log-level warn
