#!/usr/bin/env bash
# Multi-GPU pretraining with torchrun (DDP, one process per GPU). Used by the gpu pool; also runs by hand:
#
#   infra/torchrun/pretrain.sh --store data/store.zarr --preset base --out runs/pretrain [--set optim.lr=3e-4]
#
# Single node: every visible GPU (override with NPROC_PER_NODE). Several nodes: run this on each node with
#   NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<node-0 address> MASTER_PORT=29500
# The training entry point resumes from <out>/ckpt_last.pt, so relaunching after a crash or preemption
# continues the run; only rank 0 writes checkpoints and logs to MLflow.
set -euo pipefail

cd "${ECGSSL_HOME:-$(cd "$(dirname "$0")/../.." && pwd)}"
PYTHON="${PYTHON:-python}"

if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE="$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')"
fi
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
# One CPU thread per rank for the host-side work; the GPUs do the maths.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

if [[ "$NNODES" == "1" ]]; then
  RDZV=(--standalone)
else
  RDZV=(--nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
fi

echo "torchrun: ${NPROC_PER_NODE} process(es) per node, ${NNODES} node(s)" >&2
exec "$PYTHON" -m torch.distributed.run "${RDZV[@]}" --nproc_per_node "$NPROC_PER_NODE" \
  -m ecgmodel.train.pretrain "$@"
