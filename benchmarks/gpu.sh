#!/usr/bin/env bash
# What the CPU cannot show, measured on one GPU in under eight minutes (prepared; run it whenever a
# session is lent a GPU and record the printed figures):
#   1. bf16 train-step MFU for the Llama-3.2-1B shape at sequence 2048 (fp32 master weights, remat)
#   2. forward throughput (tokens/s) for the same shape in bf16
#   3. calibration throughput, when `benchmarks/calibrate.py` exists (owned by the calibration work)
#
# Usage (repo root, an environment with jax[cuda12]==0.10.2 and this package installed):
#   bash benchmarks/gpu.sh [PEAK_TFLOPS]      # PEAK_TFLOPS: dense bf16 peak of the GPU (H100/H200 SXM: 989)
# Output: benchmarks/gpu_results.jsonl (one JSON line per measurement) plus a summary on stdout.
set -euo pipefail
PEAK=${1:-989}
OUT=${OUT:-benchmarks}/gpu_results.jsonl
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
unset XLA_FLAGS

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import jax; print('jax', jax.__version__, jax.devices())"

# 1. train step: 8 sequences x 2048 tokens = 16,384 tokens per step; 1B params x 16 bytes (fp32 weights,
#    grads, two Adam moments) = ~20 GB, activations bounded by per-layer remat.
timeout 300 env JAX_PLATFORMS=cuda python benchmarks/train_step.py --shapes llama-3.2-1b --batch 8 --seq 2048 \
  --steps 10 --warmup 3 --dtype bfloat16 --remat --skip-torch --peak-tflops "$PEAK" --out "$OUT"

# 2. forward throughput, bf16, no grad
timeout 120 python - "$PEAK" "$OUT" <<'EOF'
import json, statistics, sys, time
import jax, jax.numpy as jnp, numpy as np
from prunejax import model
from prunejax.config import preset
from prunejax.train.state import random_params

peak, out = float(sys.argv[1]) * 1e12, sys.argv[2]
cfg = preset("llama-3.2-1b")
params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), random_params(cfg, jax.random.key(0)))
b, L = 16, 2048
tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (b, L)), jnp.int32)
fwd = jax.jit(lambda p, t: model.forward(cfg, p, t, dtype=jnp.bfloat16))
jax.block_until_ready(fwd(params, tokens))
times = []
for _ in range(10):
    t = time.perf_counter()
    jax.block_until_ready(fwd(params, tokens))
    times.append(time.perf_counter() - t)
t = statistics.median(times)
mfu = cfg.flops_per_token(L) * b * L / t / peak
row = {"bench": "forward", "shape": "llama-3.2-1b", "batch": b, "seq": L, "step_s": t, "tokens_per_s": b * L / t, "mfu": mfu}
print(json.dumps(row))
open(out, "a").write(json.dumps(row) + "\n")
EOF

# 3. calibration statistics throughput (only if the calibration benchmark exists)
if [ -f benchmarks/calibrate.py ]; then
  timeout 120 python benchmarks/calibrate.py --shape llama-3.2-1b --seq 2048 --out "$OUT"
else
  echo "benchmarks/calibrate.py not present: calibration throughput not measured"
fi
echo "results appended to $OUT"
