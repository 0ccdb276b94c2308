#!/usr/bin/env bash
# Run the same command on every node (NODE_RANK 0..NNODES-1); RDZV is host:port of node 0.
# train.out must be on a filesystem all nodes share (checkpoints are written by every rank).
#   NNODES=2 NODE_RANK=0 RDZV=node0:29500 NPROC=8 launch/torchrun_multi_node.sh \
#       --config default data.dataset=/data/sf_xl/processed train.out=/shared/runs/r1
set -euo pipefail
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${RDZV:?set RDZV=host:port of node 0}"
exec torchrun --nnodes="${NNODES}" --node_rank="${NODE_RANK}" --nproc_per_node="${NPROC:-8}" \
    --rdzv_backend=c10d --rdzv_endpoint="${RDZV}" --rdzv_id="${RDZV_ID:-dist-geo}" \
    --max-restarts="${MAX_RESTARTS:-3}" \
    -m dist_geo.train.cli "$@"
