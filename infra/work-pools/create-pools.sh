#!/usr/bin/env bash
# Create (or update) the ecgssl work pools on the Prefect server in PREFECT_API_URL. Idempotent.
#   infra/work-pools/create-pools.sh            # cpu + gpu (process workers)
#   infra/work-pools/create-pools.sh --docker   # also gpu-docker (needs prefect-docker on the worker host)
set -euo pipefail
cd "$(dirname "$0")"
create() {  # name type template
  if prefect work-pool inspect "$1" > /dev/null 2>&1; then
    prefect work-pool update "$1" --base-job-template "$3"
  else
    prefect work-pool create "$1" --type "$2" --base-job-template "$3"
  fi
}
create cpu process process-cpu.json
create gpu process process-gpu.json
if [[ "${1:-}" == "--docker" ]]; then
  create gpu-docker docker docker-gpu.json
fi
prefect work-pool ls
# One store writer at a time across deployments (the daily ingest and the weekly pipeline share the store):
# tasks tagged store-writer queue here instead of waiting on the store's lock.
prefect concurrency-limit create store-writer 1 > /dev/null 2>&1 || true
prefect concurrency-limit inspect store-writer > /dev/null
