#!/usr/bin/env bash
# The deepspeed launcher (ssh to every host of the hostfile; passes --local_rank=N, accepted).
#   launch/deepspeed_hostfile.sh --config default train.zero_stage=2 \
#       train.deepspeed_config=launch/ds_zero2.json train.out=/shared/runs/r1
set -euo pipefail
exec deepspeed --hostfile "${HOSTFILE:-launch/hostfile.example}" \
    --master_addr "${MASTER_ADDR:-$(hostname)}" --master_port "${MASTER_PORT:-29500}" \
    --module dist_geo.train.cli "$@"
