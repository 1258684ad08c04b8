"""The matmuls of a SmolLM2-135M forward pass, one by one: XLA:CPU's dot, MKL's sgemm behind
prunejax's custom call (`prunejax.kernels.cpu_gemm`, what `model.project` runs on CPU when it can load) and
torch's, float32.

  python benchmarks/gemm.py --batch 4 --seq 512 --repeats 7

Every projection of the forward (one [T, K] x [K, N] matmul over the T = B x L positions) is timed on
its own, jitted in JAX (XLA's dot, and the custom call when it loads) and eager in torch, the sides
interleaved in this one process (`protocol.interleaved`), median with min-max. The last column weights
each shape by how often one forward runs it (30 layers, one LM head) and adds them up: the matmul time
of one forward on each side, to set beside `forward.py`'s whole forward. Attention's matmuls are not
here (they are batched and small; `profile_step.py` times attention as a whole)."""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from protocol import interleaved, load, spread  # noqa: E402

from prunejax import runtime  # noqa: E402

runtime.tune_cpu_runtime()


def shapes(tokens: int) -> list[tuple[str, int, int, int, int]]:
    """(name, T, K, N, count per forward) of SmolLM2-135M's projections: D 576, 9 q-heads and 3 kv-heads
    of 64, F 1536, vocab 49152, 30 layers, a tied head."""
    d, kv, f, v, layers = 576, 3 * 64, 1536, 49152, 30
    return [
        ("q_proj, o_proj", tokens, d, d, 2 * layers),
        ("k_proj, v_proj", tokens, d, kv, 2 * layers),
        ("gate_proj, up_proj", tokens, d, f, 2 * layers),
        ("down_proj", tokens, f, d, layers),
        ("lm head", tokens, d, v, 1),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()

    import jax
    import numpy as np
    import torch

    from prunejax.kernels import cpu_gemm

    print(f"jax {jax.__version__} ({jax.default_backend()}), ", end="")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); custom call: {cpu_gemm.status()}")
    print(f"before: {load()}")
    jitted = {"xla": jax.jit(lambda a, b: a @ b)}
    if cpu_gemm._load()[0]:
        jitted["mkl"] = jax.jit(cpu_gemm.matmul)
    names = {"xla": "XLA's dot", "mkl": "MKL custom call", "torch": "torch"}
    cols = [*jitted, "torch"]
    print("| matmul [T, K] x [K, N] | per forward | " + " | ".join(f"{names[c]} GFLOP/s" for c in cols), end="")
    print(" | " + " | ".join(f"{names[c]} / torch" for c in cols[:-1]) + " | ms per forward: " + ", ".join(cols) + " |")
    print("|---" * (2 + 2 * len(cols)) + "|")
    totals = dict.fromkeys(cols, 0.0)
    rng = np.random.default_rng(0)
    for name, t, k, n, count in shapes(args.batch * args.seq):
        x, w = rng.standard_normal((t, k), np.float32), rng.standard_normal((k, n), np.float32) * 0.02
        xj, wj = jax.numpy.asarray(x), jax.numpy.asarray(w)
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        sides = {c: lambda fn=fn, a=xj, b=wj: fn(a, b).block_until_ready() for c, fn in jitted.items()}
        sides["torch"] = lambda a=xt, b=wt: a @ b
        for c, fn in jitted.items():
            np.testing.assert_allclose(np.asarray(fn(xj, wj)), (xt @ wt).numpy(), rtol=1e-3, atol=1e-3, err_msg=c)
        for side in sides.values():  # warm-up
            side()
        times = interleaved(sides, args.repeats)
        flops = 2 * t * k * n
        med = {s: statistics.median(ts) for s, ts in times.items()}
        for c in cols:
            totals[c] += count * med[c]
        rates = " | ".join(f"{flops / med[c] / 1e9:.0f} ({spread(times[c], 1e3, 'ms')})" for c in cols)
        ratios = " | ".join(f"{med['torch'] / med[c]:.2f}" for c in cols[:-1])
        per_forward = ", ".join(f"{count * med[c] * 1e3:.0f}" for c in cols)
        print(f"| {name}: [{t}, {k}] x [{k}, {n}] | {count} | {rates} | {ratios} | {per_forward} |")
    print("matmuls of one forward: " + ", ".join(f"{names[c]} {totals[c] * 1e3:.0f} ms" for c in cols))
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
