#!/usr/bin/env bash
# The accelerator program side by side with MaxText's, compiled ahead of time for TPU topologies on this
# CPU host: Llama-3.1-8B, the paper's recipe (configs/train/paper.yaml), four configurations.
#   bash benchmarks/accelerator/run.sh          # each config: prunejax's compile, then MaxText's; the table
#   SKIP_MAXTEXT=1 bash benchmarks/accelerator/run.sh   # prunejax's side only (MaxText's JSON/HLO kept)
#   REPEATS=3 bash benchmarks/accelerator/run.sh        # each compile 3 times: median compile s and host RAM
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
declare -A CFG MAXTEXT
CFG[v5p64_pdb16]="--topology v5p-64";                  MAXTEXT[v5p64_pdb16]=a
CFG[v5p64_pdb4_ga4]="--topology v5p-64 grad_accum=4";   MAXTEXT[v5p64_pdb4_ga4]=b
CFG[v4-256_pdb4]="--topology v4-256";                   MAXTEXT[v4-256_pdb4]=c
CFG[v5p64_pdb4]="--topology v5p-64 global_batch=128";   MAXTEXT[v5p64_pdb4]=d
REPEATS="${REPEATS:-1}"   # compiles per side and configuration; the table gives the medians of their times
: > "$OUT/timings.jsonl"
prunejax_side() {
  local name="$1"; shift
  echo "prunejax $name (load $(cut -d' ' -f1-3 /proc/loadavg))"
  # another libtpu process may hold libtpu's lock file: these processes only compile
  ALLOW_MULTIPLE_LIBTPU_LOAD=1 "$ROOT/.venv-tpu/bin/prunejax" compile-check --model llama-3.1-8b \
    --train-config "$ROOT/configs/train/paper.yaml" --only train "$@" \
    --json "$OUT/$name.json" --dump-hlo "$OUT/hlo/$name" 2>"$OUT/$name.stderr" || return 0
  "$ROOT/.venv/bin/python" "$HERE/table.py" --record prunejax "$name"
}
maxtext_side() {
  local name="$1"
  [[ -z "${SKIP_MAXTEXT:-}" ]] || return 0
  bash "$ROOT/benchmarks/maxtext/run.sh" "${MAXTEXT[$name]}" | grep -v "^|" || return 0
  "$ROOT/.venv/bin/python" "$HERE/table.py" --record MaxText "$name"
}
# interleaved, one compile at a time: each configuration's compiles run back to back, the side going
# first alternating, so both see the same machine (compile time depends on the host's load; memory and
# the counts do not)
for name in v5p64_pdb16 v5p64_pdb4_ga4 v4-256_pdb4 v5p64_pdb4; do
  read -r -a extra <<< "${CFG[$name]}"
  for ((rep = 1; rep <= REPEATS; rep++)); do
    if ((rep % 2)); then prunejax_side "$name" "${extra[@]}"; maxtext_side "$name"
    else maxtext_side "$name"; prunejax_side "$name" "${extra[@]}"; fi
  done
done
echo "load average at the end: $(cat /proc/loadavg)"
"$ROOT/.venv/bin/python" "$HERE/table.py"
