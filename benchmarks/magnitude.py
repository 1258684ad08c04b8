"""Magnitude pruning of a real model, prunejax against a plain torch threshold, on the same weights.

  python benchmarks/magnitude.py --model MODEL_DIR [--ratio 0.5] [--repeats 5]

Both sides start from the weights in memory (loading is not timed) and prune every decoder layer's
seven projections, each matrix on its own: prunejax with `prune.sparse.magnitude` (exact counts, ties
broken by index, masks returned), torch with `torch.kthvalue` of |W| per matrix and `|W| > kth` (the
least a user would write: no tie handling, so it prunes every weight tied with the k-th). Runs alternate;
prints median with min-max per side, the load average, and whether the two masks agree.
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from protocol import interleaved, load, spread  # noqa: E402

from prunejax import runtime  # noqa: E402

runtime.tune_cpu_runtime()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="MODEL_DIR")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import jax
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from prunejax import hf
    from prunejax.prune.masks import as_rows
    from prunejax.prune.sparse import magnitude

    cfg, params = hf.load(args.model)
    state = load_file(os.path.join(args.model, "model.safetensors"))
    names = [k for k in state if k.endswith("_proj.weight")]
    out: dict[str, object] = {}

    def ours() -> None:
        out["ours"] = jax.block_until_ready(magnitude(cfg, params, ratio=args.ratio).masks)

    def theirs() -> None:
        masks = {}
        for name in names:
            w = state[name].abs().flatten()
            k = int(round(w.numel() * args.ratio))
            kth = torch.kthvalue(w, k).values
            masks[name] = (state[name].abs() > kth).numpy()
        out["torch"] = masks

    before = load()
    times = interleaved({"prunejax": ours, "torch": theirs}, args.repeats)
    print(f"{args.model}: {len(names)} matrices, ratio {args.ratio}; {before} before, {load()} after")
    for side, ts in times.items():
        print(f"  {side:8s} {spread(ts)}")
    ratio = statistics.median(times["torch"]) / statistics.median(times["prunejax"])
    print(f"  prunejax speed / torch speed: {ratio:.2f}x")
    differ = 0
    for name in names:  # model.layers.I.self_attn.q_proj.weight -> layers/I/self_attn/q_proj, as rows x inputs
        _, _, i, block, proj, _ = name.split(".")
        ours_rows = np.asarray(as_rows(proj, out["ours"]["layers"][i][block][proj]))
        differ += int((ours_rows != out["torch"][name]).sum())
    print(f"  masks differ in {differ} of {sum(state[n].numel() for n in names):,} weights")


if __name__ == "__main__":
    main()
