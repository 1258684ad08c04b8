#!/usr/bin/env bash
# Run one prunejax verb on all workers of a slice (one process per host; JAX's multi-controller
# runtime finds the others through PRUNEJAX_DISTRIBUTED=1):
#   tpu_scripts/run.sh NAME train --config configs/train/paper.yaml --init gs://B/m --data gs://B/dclm --tokens 50B --out /mnt/r
# (MODEL_DIRs and DATA_DIRs may be gs://; a RUN_DIR must be a path every worker shares, e.g. an NFS mount)
source "$(dirname "$0")/common.sh"
NAME=$1; shift
ARGS=$(printf '%q ' "$@")
on_all_workers "$NAME" "cd prunejax && PRUNEJAX_DISTRIBUTED=1 .venv/bin/prunejax $ARGS"
