#!/usr/bin/env bash
# AOT-compile MaxText 0.2.5's Llama-3.1-8B train step for TPU topologies on this CPU host,
# one configuration at a time, and print a table.
#   bash benchmarks/maxtext/run.sh              # all four configurations
#   bash benchmarks/maxtext/run.sh a c          # a subset (a|b|c|d; e = OOM probe, opt-in)
# Results: benchmarks/maxtext/results/<name>.json (+ .log), HLO text in results/hlo/ (git-ignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv-maxtext}"
OUT="${OUT:-$HERE/results}"
mkdir -p "$OUT/hlo"

echo "[run] date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB RAM"
echo "[run] load average at start: $(cat /proc/loadavg)"

VENV="$VENV" bash "$HERE/setup.sh"

# The paper's recipe as MaxText 0.2.5 options (names from maxtext/configs/base.yml).
COMMON=(
  model_name=llama3.1-8b
  attention=flash            # on TPU: the Pallas splash-attention kernel
  remat_policy=full
  dtype=bfloat16
  weight_dtype=float32
  opt_type=adamw
  max_target_length=8192
  num_vocab_tiling=8         # LM head + loss in 8 chunks over batch*sequence
  scan_layers=true
  compile_topology_num_slices=1
  dataset_type=synthetic
  enable_checkpointing=false
)

declare -A CFG
CFG[a]="v5p64_pdb16|compile_topology=v5p-64 per_device_batch_size=16"
CFG[b]="v5p64_pdb4_ga4|compile_topology=v5p-64 per_device_batch_size=4 gradient_accumulation_steps=4"
CFG[c]="v4-256_pdb4|compile_topology=v4-256 per_device_batch_size=4"
CFG[d]="v5p64_pdb4|compile_topology=v5p-64 per_device_batch_size=4"
# Opt-in calibration (not in the default set): expected to fail in seconds with libtpu's
# CompileTimeHbmOom message, which states the HBM capacity the compiler enforces.
CFG[e]="v5p64_pdb32_oomprobe|compile_topology=v5p-64 per_device_batch_size=32"

WHICH=("$@")
[[ ${#WHICH[@]} -eq 0 ]] && WHICH=(a b c d)

TIME=()
[[ -x /usr/bin/time ]] && TIME=(/usr/bin/time -f "[run] /usr/bin/time: maxrss_kb=%M wall_s=%e")

rc_all=0
for k in "${WHICH[@]}"; do
  spec="${CFG[$k]:?unknown configuration $k (use a|b|c|d|e)}"
  name="${spec%%|*}"
  read -r -a extra <<< "${spec#*|}"
  echo "[run] ($k) $name: ${extra[*]}  (load $(cut -d' ' -f1-3 /proc/loadavg))"
  # One compile at a time (2-core host); each is a separate process so peak RSS is its own.
  set +e
  "${TIME[@]}" "$VENV/bin/python" "$HERE/compile.py" --name "$name" --out "$OUT" -- \
    "${COMMON[@]}" "${extra[@]}" run_name="$name" base_output_directory="/tmp/maxtext_aot/$name" \
    > "$OUT/$name.log" 2>&1
  rc=$?
  set -e
  grep -E "^\[compile.py\]|^\[run\] /usr/bin/time|Memory analysis|Total estimated|CompileTimeHbmOom" "$OUT/$name.log" | sort -u || true
  if [[ $rc -ne 0 && $k != e ]]; then echo "[run] $name failed (rc=$rc), see $OUT/$name.log"; rc_all=1; fi
done

# FLOPs, bytes and roofline of these programs beside prunejax's: benchmarks/accelerator/table.py (the
# same loop-aware counter and splash-kernel FLOPs on both sides).
"$VENV/bin/python" "$HERE/table.py" "$OUT"
exit $rc_all
