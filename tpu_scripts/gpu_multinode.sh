#!/usr/bin/env bash
# GPU fallback. One node with several GPUs: a single process sees them all, nothing to do but e.g.
#   prunejax train --config configs/train/smollm2.yaml mesh_data=1 mesh_fsdp=-1 ...
# Several nodes: start this script once per node (e.g. from SLURM or by hand), same arguments; it runs
# `prunejax VERB ARGS` joined to the other nodes. Every verb spans hosts this way (study included):
#   COORDINATOR=node0:12345 NUM_NODES=4 NODE_RANK=$i tpu_scripts/gpu_multinode.sh train --config configs/train/smollm2.yaml --init M --data D --tokens 2M --out RUN_DIR
#   COORDINATOR=node0:12345 NUM_NODES=4 NODE_RANK=$i tpu_scripts/gpu_multinode.sh study configs/study/smollm2.yaml --out gs://B/smollm2
# Each process joins JAX's multi-controller runtime (jax.distributed) over the coordinator; process 0
# writes every shared file, so an output directory must be gs:// or on a file system all nodes share.
# Under SLURM, `PRUNEJAX_DISTRIBUTED=1 srun .venv/bin/prunejax VERB ARGS` lets JAX find the nodes instead.
# Needs .venv with this package and jax[cuda12]==0.10.2 (pyproject.toml has no CUDA extra).
set -euo pipefail
: "${COORDINATOR:?host:port of node 0}" "${NUM_NODES:?number of nodes}" "${NODE_RANK:?this node, 0..NUM_NODES-1}"
[ $# -ge 1 ] || { echo "usage: tpu_scripts/gpu_multinode.sh VERB [ARGS...]" >&2; exit 2; }
exec "$(dirname "$0")/../.venv/bin/prunejax" "$@" \
  --coordinator "$COORDINATOR" --num-processes "$NUM_NODES" --process-id "$NODE_RANK"
