#!/usr/bin/env bash
# Run one prunejax verb on all workers of a slice (one process per host; JAX's multi-controller
# runtime finds the others through PRUNEJAX_DISTRIBUTED=1). Every verb spans hosts this way:
#   tpu_scripts/run.sh NAME train --config configs/train/paper.yaml --init gs://B/m --data gs://B/dclm --tokens 50B --out gs://B/runs/r
#   tpu_scripts/run.sh NAME study configs/study/paper.yaml --out gs://B/paper --dry-run
# Directories (MODEL_DIR, DATA_DIR, RUN_DIR, STUDY_DIR) and configs may be gs:// paths, which every worker
# reaches, or paths on a file system every worker shares (e.g. NFS); a worker's local disk is not shared.
# Relative paths are read from the checkout on each worker (~/prunejax).
source "$(dirname "$0")/common.sh"
NAME=$1; shift
ARGS=$(printf '%q ' "$@")
on_all_workers "$NAME" "cd prunejax && PRUNEJAX_DISTRIBUTED=1 .venv/bin/prunejax $ARGS"
