"""Where a sparse pruning put its zeros: the zero fraction of each decoder layer's projections.

  python benchmarks/owl_layers.py --dense /tmp/smol ours=/tmp/ours/owl_0.7 llmc=/tmp/llmcw/owl_0.7.safetensors

Each LABEL=PATH is a MODEL_DIR (its model*.safetensors shards) or one safetensors file of pruned
weights under the transformers names (`benchmarks/prune_llmcompressor.py --save-weights`). For every
decoder layer it counts the zero entries of the layer's 2-D weights (the seven projections together)
over their size: the ground truth of the per-layer ratio a method allocated, whatever its report
says. `--dense` adds the dense model's own zero fraction (weights that were zero before pruning count
as zero here too). Prints a markdown table, one row per layer, one column per PATH, and with
`--json FILE` writes the same numbers. Standard library, numpy and safetensors only: it runs in
either environment.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

import numpy as np


def files_of(path: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(path, "model*.safetensors"))) if os.path.isdir(path) else [path]
    if not files:
        raise SystemExit(f"{path}: no model*.safetensors")
    return files


def layer_zero_fraction(path: str) -> dict[int, float]:
    """{layer index: zeros / size over the layer's 2-D decoder weights}."""
    from safetensors import safe_open

    zeros: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for f in files_of(path):
        with safe_open(f, framework="numpy") as st:
            for name in st.keys():
                m = re.search(r"\.layers\.(\d+)\.", name)
                if not m:
                    continue
                w = st.get_tensor(name)
                if w.ndim != 2:
                    continue
                k = int(m.group(1))
                zeros[k] = zeros.get(k, 0) + int(np.count_nonzero(w == 0))
                sizes[k] = sizes.get(k, 0) + w.size
    if not sizes:
        raise SystemExit(f"{path}: no decoder layer weights")
    return {k: zeros[k] / sizes[k] for k in sorted(sizes)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="LABEL=PATH")
    p.add_argument("--dense", help="the dense MODEL_DIR, for its own zero fraction per layer")
    p.add_argument("--json", help="also write {label: {layer: fraction}} here")
    args = p.parse_args()
    columns: dict[str, dict[int, float]] = {}
    if args.dense:
        columns["dense"] = layer_zero_fraction(args.dense)
    for run in args.runs:
        label, sep, path = run.partition("=")
        if not sep:
            raise SystemExit(f"{run!r}: expected LABEL=PATH")
        columns[label] = layer_zero_fraction(path)
    layers = sorted(set().union(*(c.keys() for c in columns.values())))
    print("| layer | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for k in layers:
        print(f"| {k} | " + " | ".join(f"{c[k]:.4f}" if k in c else "-" for c in columns.values()) + " |")
    print("| mean | " + " | ".join(f"{np.mean(list(c.values())):.4f}" for c in columns.values()) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({label: {str(k): v for k, v in c.items()} for label, c in columns.items()}, f, indent=1)


if __name__ == "__main__":
    main()
