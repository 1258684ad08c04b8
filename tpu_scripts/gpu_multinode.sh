#!/usr/bin/env bash
# GPU fallback. One node with several GPUs: a single process sees them all, nothing to do but
#   prunejax train --config configs/train/smollm2.yaml mesh_fsdp=-1 ...
# Several nodes: start this script once per node (e.g. from SLURM or by hand), same arguments:
#   COORDINATOR=node0:12345 NUM_NODES=4 NODE_RANK=$i tpu_scripts/gpu_multinode.sh --config ... --out RUN_DIR
# Each process runs `prunejax train` (the verb that spans hosts) and joins JAX's multi-controller
# runtime (jax.distributed) over the coordinator; data is split per process, checkpoints are multi-host.
set -euo pipefail
: "${COORDINATOR:?host:port of node 0}" "${NUM_NODES:?number of nodes}" "${NODE_RANK:?this node, 0..NUM_NODES-1}"
exec "$(dirname "$0")/../.venv/bin/prunejax" train "$@" \
  --coordinator "$COORDINATOR" --num-processes "$NUM_NODES" --process-id "$NODE_RANK"
