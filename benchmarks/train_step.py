"""Train-step throughput: prunejax's jitted step vs a transformers+torch AdamW step on the same model.

  python benchmarks/train_step.py --shapes tiny smollm2-135m --batch 4 --seq 128 --steps 5

Reports per shape the median step time over `--steps` timed steps (after `--warmup`), tokens/s,
and model-FLOPs utilization against this machine's measured float32 matmul peak (one [n,n]x[n,n]
matmul, best of 5, in each framework). Both sides do the same work: forward, cross-entropy,
backward, global-norm clip to 1.0, AdamW (0.9/0.95, wd 0.1), float32.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def jax_step_times(
    cfg, batch: int, seq: int, steps: int, warmup: int, dtype: str = "float32", remat: bool = False
) -> list[float]:
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
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        state, metrics = fn(state, b)
        jax.block_until_ready(metrics)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def torch_step_times(cfg, batch: int, seq: int, steps: int, warmup: int) -> list[float]:
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
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def torch_matmul_peak(n: int = 1024) -> float:
    import torch

    a = torch.ones(n, n)
    best = float("inf")
    for _ in range(6):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


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
    args = parser.parse_args()

    import jax

    from prunejax.config import preset
    from prunejax.train.metrics import measure_matmul_peak

    peak_jax = args.peak_tflops * 1e12 if args.peak_tflops else measure_matmul_peak()
    peak_torch = None if args.skip_torch else torch_matmul_peak()
    tokens = args.batch * args.seq
    print(f"device {jax.devices()[0].device_kind}; matmul peak jax {peak_jax / 1e9:.1f} GFLOP/s", end="")
    print("" if peak_torch is None else f", torch {peak_torch / 1e9:.1f} GFLOP/s")
    for name in args.shapes:
        cfg = preset(name)
        flops = cfg.flops_per_token(args.seq, training=True) * tokens
        row = {"shape": name, "batch": args.batch, "seq": args.seq, "params": cfg.num_params(), "dtype": args.dtype}
        jax_fn = functools.partial(jax_step_times, dtype=args.dtype, remat=args.remat)
        sides = [("jax", jax_fn, peak_jax)]
        if not args.skip_torch:
            sides.append(("torch", torch_step_times, peak_torch))
        for side, fn, peak in sides:
            t = statistics.median(fn(cfg, args.batch, args.seq, args.steps, args.warmup))
            row[side] = {"step_s": t, "tokens_per_s": tokens / t, "mfu": flops / t / peak}
            print(f"{name:14s} {side:5s} step {t * 1e3:9.1f} ms  {tokens / t:10.0f} tok/s  MFU {flops / t / peak:6.1%}")
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
