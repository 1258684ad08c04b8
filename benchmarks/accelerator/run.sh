#!/usr/bin/env bash
# The accelerator program side by side with MaxText's, compiled ahead of time for TPU topologies on this
# CPU host: Llama-3.1-8B, the paper's recipe (configs/train/paper.yaml), four configurations.
#   bash benchmarks/accelerator/run.sh          # prunejax's compiles, MaxText's (benchmarks/maxtext), the table
#   SKIP_MAXTEXT=1 bash benchmarks/accelerator/run.sh   # prunejax's side only (MaxText's JSON/HLO kept)
# One compile at a time (each takes minutes and a few GB of host RAM). prunejax compiles in .venv-tpu
# (prunejax + jax[tpu], the pair jax pins); MaxText in its own venv (Python 3.12, jax 0.12).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/results"
mkdir -p "$OUT/hlo"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(nproc) cores  load average: $(cat /proc/loadavg)"
if [[ ! -x "$ROOT/.venv-tpu/bin/prunejax" ]]; then
  python3 -m venv "$ROOT/.venv-tpu"
  "$ROOT/.venv-tpu/bin/pip" install -q -e "$ROOT[tpu]"
fi
declare -A CFG
CFG[v5p64_pdb16]="--topology v5p-64"
CFG[v5p64_pdb4_ga4]="--topology v5p-64 grad_accum=4"
CFG[v4-256_pdb4]="--topology v4-256"
CFG[v5p64_pdb4]="--topology v5p-64 global_batch=128"
for name in v5p64_pdb16 v5p64_pdb4_ga4 v4-256_pdb4 v5p64_pdb4; do
  read -r -a extra <<< "${CFG[$name]}"
  echo "prunejax $name (load $(cut -d' ' -f1-3 /proc/loadavg))"
  # another libtpu process (a MaxText compile) may hold libtpu's lock file: these only compile
  ALLOW_MULTIPLE_LIBTPU_LOAD=1 "$ROOT/.venv-tpu/bin/prunejax" compile-check --model llama-3.1-8b \
    --train-config "$ROOT/configs/train/paper.yaml" --only train "${extra[@]}" \
    --json "$OUT/$name.json" --dump-hlo "$OUT/hlo/$name" 2>"$OUT/$name.stderr" || true
done
[[ -n "${SKIP_MAXTEXT:-}" ]] || bash "$ROOT/benchmarks/maxtext/run.sh" a b c d
"$ROOT/.venv/bin/python" "$HERE/table.py"
