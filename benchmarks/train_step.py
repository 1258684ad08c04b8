"""Train-step throughput: prunejax's jitted step vs a transformers+torch AdamW step on the same model.

  python benchmarks/train_step.py --shapes tiny smollm2-135m --batch 4 --seq 128 --steps 5

A shape is a preset name or a model YAML/JSON. Reports per shape the median step time over `--steps`
timed steps of each side (after `--warmup`; the two sides' steps alternate) with min-max, tokens/s,
and model-FLOPs utilization against this machine's measured float32 matmul peak (one [n,n]x[n,n]
matmul, best of 5, in each framework), and the load average. Both sides do the same work: forward,
cross-entropy, backward, global-norm clip to 1.0, AdamW (0.9/0.95, wd 0.1), float32. The process
runs with prunejax's CPU runtime settings (`prunejax.runtime`, as every `prunejax` verb does);
`PRUNEJAX_MALLOC=system` measures both sides with glibc's defaults instead.

`--processes R` runs each side in processes of its own instead: R rounds, each one fresh process per
side (alternating which goes first) that warms up and times `--steps` steps; the medians are over all
R x steps steps. In one process the two frameworks' thread pools share the 2 cores, and each side's
step is then slower than it is alone (the tiny step: prunejax 39 -> 47 ms, torch 36 -> 40 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from protocol import in_processes, interleaved, load, spread  # noqa: E402

from prunejax import runtime  # noqa: E402

runtime.tune_cpu_runtime()


def jax_stepper(
    cfg, batch: int, seq: int, warmup: int, dtype: str = "float32", remat: bool = False
) -> Callable[[], None]:
    """One prunejax train step (the jitted step `prunejax train` runs), warmed up; each call runs one more."""
    import jax
    import numpy as np

    from prunejax import sharding
    from prunejax.train import optim
    from prunejax.train import state as state_lib
    from prunejax.train.config import TrainConfig
    from prunejax.train.step import make_train_step

    tcfg = TrainConfig(seq_len=seq, global_batch=batch, compute_dtype=dtype, remat=remat)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    opt = optim.optimizer(tcfg, 1000)
    state = state_lib.init_state(state_lib.random_params(cfg, jax.random.key(0)), None, opt, 0)
    state = state_lib.place_state(mesh, state)
    fn = state_lib.jit_train_step(make_train_step(cfg, tcfg, opt, 1000), mesh, state)
    rng = np.random.default_rng(0)
    windows = rng.integers(0, cfg.vocab_size, (1, batch, seq + 1)).astype(np.int32)
    b = state_lib.global_batch(mesh, {"inputs": windows[..., :-1], "targets": windows[..., 1:]})

    def step() -> None:
        nonlocal state
        state, metrics = fn(state, b)
        jax.block_until_ready(metrics)

    for _ in range(warmup):
        step()
    return step


def torch_stepper(cfg, batch: int, seq: int, warmup: int) -> Callable[[], None]:
    """The same step in transformers+torch, warmed up."""
    import torch
    import transformers

    hf_cfg = transformers.LlamaConfig(**{**cfg.to_hf_dict(), "torch_dtype": "float32"})
    model = transformers.LlamaForCausalLM(hf_cfg).float().train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=3e-4, betas=(0.9, 0.95)
    )
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=g)
    inputs, targets = windows[:, :-1], windows[:, 1:]

    def step() -> None:
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()

    for _ in range(warmup):
        step()
    return step


def torch_matmul_peak(n: int = 1024) -> float:
    import torch

    a = torch.ones(n, n)
    best = float("inf")
    for _ in range(6):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def shape_config(name: str):
    """The LlamaConfig of a preset name or a model YAML/JSON file."""
    from prunejax.config import LlamaConfig, preset

    return LlamaConfig.from_file(name) if os.path.exists(name) else preset(name)


def time_one_side(args: argparse.Namespace) -> None:
    """`--one SIDE`: this process builds one side's step, warms it up, and prints its step times as JSON."""
    cfg = shape_config(args.shapes[0])
    if args.one == "jax":
        step = jax_stepper(cfg, args.batch, args.seq, args.warmup, args.dtype, args.remat)
    else:
        step = torch_stepper(cfg, args.batch, args.seq, args.warmup)
    print(json.dumps(interleaved({args.one: step}, args.steps)[args.one]))


def side_flags(shape: str, args: argparse.Namespace) -> list[str]:
    """The flags of a `--one SIDE` process that times `shape` as this run does."""
    flags = ["--shapes", shape, "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)]
    return flags + ["--warmup", str(args.warmup), "--dtype", args.dtype] + (["--remat"] if args.remat else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "smollm2-135m"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="jax compute dtype")
    parser.add_argument("--remat", action="store_true", help="rematerialize each layer (jax)")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU instead of the measured f32 matmul")
    parser.add_argument("--out", help="append one JSON line per shape here")
    parser.add_argument("--processes", type=int, default=0, help="rounds of one process per side (0: one process)")
    parser.add_argument("--one", choices=["jax", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return time_one_side(args)

    import jax

    from prunejax.train.metrics import measure_matmul_peak

    peak_jax = args.peak_tflops * 1e12 if args.peak_tflops else measure_matmul_peak()
    peak_torch = None if args.skip_torch else torch_matmul_peak()
    tokens = args.batch * args.seq
    print(f"device {jax.devices()[0].device_kind}; matmul peak jax {peak_jax / 1e9:.1f} GFLOP/s", end="")
    print("" if peak_torch is None else f", torch {peak_torch / 1e9:.1f} GFLOP/s")
    for name in args.shapes:
        cfg = shape_config(name)
        flops = cfg.flops_per_token(args.seq, training=True) * tokens
        row = {"shape": name, "batch": args.batch, "seq": args.seq, "params": cfg.num_params(), "dtype": args.dtype}
        peaks = {"jax": peak_jax} if args.skip_torch else {"jax": peak_jax, "torch": peak_torch}
        before = load()
        if args.processes:
            times = in_processes(__file__, side_flags(name, args), list(peaks), args.processes)
        else:
            sides = {"jax": jax_stepper(cfg, args.batch, args.seq, args.warmup, args.dtype, args.remat)}
            if not args.skip_torch:
                sides["torch"] = torch_stepper(cfg, args.batch, args.seq, args.warmup)
            times = interleaved(sides, args.steps)
        print(f"{name} {args.batch}x{args.seq}: {before} before, {load()} after")
        for side, ts in times.items():
            t = statistics.median(ts)
            row[side] = {"step_s": t, "min_s": min(ts), "max_s": max(ts), "tokens_per_s": tokens / t}
            row[side]["mfu"] = flops / t / peaks[side]
            print(f"  {side:5s} step {spread(ts, 1e3, 'ms')}  {tokens / t:10.0f} tok/s  MFU {row[side]['mfu']:6.1%}")
        if "torch" in times:
            ratio = statistics.median(times["torch"]) / statistics.median(times["jax"])
            print(f"  prunejax speed / torch speed: {ratio:.2f}x")
        row["load_before"], row["load_after"] = before, load()
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
