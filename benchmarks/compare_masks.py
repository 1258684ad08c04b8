"""Where two sparse prunings of the same dense model differ, projection by projection.

  python benchmarks/compare_masks.py --dense /tmp/smol --ours /tmp/ours_wanda \
      --theirs /tmp/llmcw/wanda.safetensors

`--ours` is a MODEL_DIR written by `prunejax prune`; `--theirs` a safetensors file of the other
tool's pruned weights under the same (transformers) names, e.g. from
`benchmarks/prune_llmcompressor.py --save-weights DIR`. A weight counts as kept where it is
non-zero; positions already zero in the dense model are left out (either answer is right there).
Prints, per decoder projection, the fraction of positions whose kept/removed status differs and
the largest weight difference, then any non-decoder tensor that differs at all (e.g. a tied
embedding that the other tool pruned through its LM head).
"""

from __future__ import annotations

import argparse
import glob
import os
import re

import numpy as np


def load(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, or of a MODEL_DIR's weight shards, as float32."""
    from safetensors.flax import load_file  # the numpy loader cannot read bf16

    files = sorted(glob.glob(os.path.join(path, "model*.safetensors"))) if os.path.isdir(path) else [path]
    if not files:
        raise SystemExit(f"{path}: no model*.safetensors")
    return {k: np.asarray(v, np.float32) for f in files for k, v in load_file(f).items()}


def layer_order(name: str) -> tuple[int, str]:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dense", required=True, help="the dense MODEL_DIR both prunings started from")
    p.add_argument("--ours", required=True, help="prunejax MODEL_DIR")
    p.add_argument("--theirs", required=True, help="safetensors file or directory of the other pruning")
    p.add_argument("--all", action="store_true", help="print every projection, not only those that differ")
    args = p.parse_args()
    dense, ours, theirs = load(args.dense), load(args.ours), load(args.theirs)
    missing = sorted(set(ours) ^ set(theirs))
    if missing:
        raise SystemExit(f"the two prunings name different tensors: {missing[:8]}")
    differ = 0
    for name in sorted(ours, key=layer_order):
        a, b = ours[name], theirs[name]
        if a.shape != b.shape:
            raise SystemExit(f"{name}: shapes differ {a.shape} vs {b.shape}")
        gap = float(np.abs(a - b).max())
        if ".layers." in name and a.ndim == 2:
            settled = dense[name] != 0
            flips = float(((a != 0) != (b != 0))[settled].mean()) if settled.any() else 0.0
            if flips or args.all:
                print(f"{name:48s} mask differs at {flips:.6f} of positions, max |ours - theirs| {gap:.3g}")
            differ += flips > 0
        elif gap:
            print(
                f"{name:48s} NOT a decoder projection, yet differs: max gap {gap:.3g}, zero fraction "
                f"dense {np.mean(dense[name] == 0):.4f} ours {np.mean(a == 0):.4f} theirs {np.mean(b == 0):.4f}"
            )
    print(f"{differ} decoder projection(s) with any mask difference")


if __name__ == "__main__":
    main()
