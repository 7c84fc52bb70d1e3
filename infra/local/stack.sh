#!/usr/bin/env bash
# The ecgssl stack as processes on this machine: infra/local/stack.sh up|down|status|env|deploy|start|stop|restart
# (infra/local/stack.py says what each does; docs/deployments.md walks through it). Uses the checkout's .venv.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${ECGSSL_PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || { echo "stack: $python not found: run 'make install' first" >&2; exit 2; }
exec "$python" "$here/stack.py" "$@"
