#!/usr/bin/env bash
# One machine, NPROC processes (one per GPU; on a CPU-only machine NPROC CPU ranks over gloo).
# Elastic: a crashed worker group is restarted up to MAX_RESTARTS times and resumes from
# <train.out>/checkpoints/last automatically.
#   NPROC=2 launch/torchrun_single_node.sh --config demo train.out=runs/demo
set -euo pipefail
NPROC=${NPROC:-$( (command -v nvidia-smi >/dev/null && nvidia-smi -L | wc -l) || echo 1)}
exec torchrun --standalone --nproc_per_node="${NPROC}" --max-restarts="${MAX_RESTARTS:-0}" \
    -m dist_geo.train.cli "$@"
