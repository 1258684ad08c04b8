#!/usr/bin/env bash
# Every CPU row of the speed table in benchmarks/README.md, one after the other, by issue 15's protocol.
#
#   bash benchmarks/cpu_rows.sh MODEL_DIR KJV_SMOL PARENT.yaml KJV_TINY LLMC_PYTHON OUT_DIR
#
# MODEL_DIR    SmolLM2-135M (prunejax convert .../SmolLM2-135M-Instruct.Q4_1.gguf --out MODEL_DIR)
# KJV_SMOL     KJV tokenized with it (prunejax data prepare --corpus kjv --tokenizer MODEL_DIR --val-fraction 0.1)
# PARENT.yaml  the tiny study's parent shape (configs/study/tiny.yaml's parent.model, vocab_size 512)
# KJV_TINY     KJV with the tiny study's 512-token BPE (data train-tokenizer --vocab-size 512; data prepare
#              --val-fraction 0.02)
# LLMC_PYTHON  the python of a venv with torch==2.13.0 and llmcompressor (prune_llmcompressor.py's peer)
# Each row's output goes to OUT_DIR/<row>.txt (pruning rows: OUT_DIR/*.jsonl); run it on an idle machine.
# ROWS (a space-separated list of row names, e.g. ROWS="step_tiny_16x128 whole_run_cold") runs only those.
set -euo pipefail
model=$1 kjv_smol=$2 parent=$3 kjv_tiny=$4 llmc=$5 out=$6
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python}
mkdir -p "$out"
cache=""
want() { [[ -z "${ROWS:-}" || " $ROWS " == *" $1 "* ]]; }
row() {
  local name=$1; shift
  want "$name" || return 0
  echo "== $name: $*"; "$@" 2>&1 | grep -v -i warning | tee "$out/$name.txt"
}
row step_tiny_8x256 "$py" "$here/train_step.py" --shapes tiny --batch 8 --seq 256 --steps 9 --warmup 3
row step_tiny_16x128 "$py" "$here/train_step.py" --shapes tiny "$parent" --batch 16 --seq 128 --steps 10 --warmup 3
row step_tiny_8x256_processes "$py" "$here/train_step.py" --shapes tiny --batch 8 --seq 256 --steps 10 --warmup 3 \
    --processes 4
row step_tiny_16x128_processes "$py" "$here/train_step.py" --shapes tiny "$parent" --batch 16 --seq 128 --steps 10 \
    --warmup 3 --processes 4
row step_parent_system_malloc env PRUNEJAX_MALLOC=system "$py" "$here/train_step.py" --shapes "$parent" \
    --batch 16 --seq 128 --steps 10 --warmup 3
# SmolLM2's rows: each side in processes of its own. prunejax's matmuls there run on MKL (prunejax.kernels.cpu_gemm),
# a second copy beside torch's in one process, and the two slow each other down (torch's step 5.0 -> 5.4 s).
row forward_smollm2 "$py" "$here/forward.py" --model "$model" --batch 4 --seq 512 --reps 5 --processes 3
row step_smollm2 "$py" "$here/train_step.py" --shapes smollm2-135m --batch 4 --seq 256 --steps 5 --warmup 2 \
    --processes 2
row magnitude "$py" "$here/magnitude.py" --model "$model" --repeats 5
flags=(--model "$model" --calib "$kjv_smol" --other "$kjv_smol" --calib-samples 8 --calib-seq-len 512 --eval-windows 4)
want prune && for i in 1 2 3 4 5; do  # every run its own process; which side goes first alternates
  for method in wanda sparsegpt "wanda 2:4"; do
    jaxrun=("$py" "$here/prune.py" "${flags[@]}" --runs "$method" --out-json "$out/prunejax.jsonl")
    llmcrun=("$llmc" "$here/prune_llmcompressor.py" "${flags[@]}" --runs "$method" --out-json "$out/llmcompressor.jsonl")
    echo "== prune $method repeat $i, load $(cut -d' ' -f1 /proc/loadavg)"
    if (( i % 2 )); then "${jaxrun[@]}" >> "$out/prune.log" 2>&1; "${llmcrun[@]}" >> "$out/prune.log" 2>&1
    else "${llmcrun[@]}" >> "$out/prune.log" 2>&1; "${jaxrun[@]}" >> "$out/prune.log" 2>&1; fi
  done
done
row whole_run_cold "$py" "$here/whole_run.py" --model-config "$parent" --data "$kjv_tiny" --tokens 150k --repeats 5 \
    --prunejax-env PRUNEJAX_COMPILE_CACHE=off
want whole_run_warm && cache=$(mktemp -d) && \
PRUNEJAX_COMPILE_CACHE=$cache "$py" "$here/whole_run.py" --model-config "$parent" --data "$kjv_tiny" --tokens 150k \
    --repeats 1 --prunejax-env PRUNEJAX_COMPILE_CACHE="$cache" > /dev/null 2>&1  # primes the cache
row whole_run_warm "$py" "$here/whole_run.py" --model-config "$parent" --data "$kjv_tiny" --tokens 150k --repeats 5 \
    --prunejax-env PRUNEJAX_COMPILE_CACHE="$cache"
