"""prunejax's Wanda at a given per-layer allocation: which part of an OWL difference is the allocation.

  python benchmarks/owl_allocation.py --model /tmp/smol --calib /tmp/kjv --other /tmp/pydoc \
      --ratios-from /tmp/owl_llmc.jsonl --run "owl 0.7" --calib-samples 16 --calib-seq-len 512 \
      --eval-windows 8 --eval-seq-len 512

`--ratios-from` is the JSON-lines output of `benchmarks/prune_llmcompressor.py`; the row named
`--run` gives the per-layer sparsities llmcompressor's OWL allocated (`owl_layer_sparsity`, in layer
order). They are turned into per-matrix counts exactly as `prunejax prune --method owl` turns its own
ratios into counts (`owl.matrix_counts`: round(t·P) weights in all, t the ratios' mean), and pruned
with prunejax's own Wanda pass (`sparse.wanda_pass`) on the calibration tokens of
`benchmarks/prune.py`; perplexity on the same windows. So the model differs from `prune.py`'s OWL row
only in the allocation formula, and from llmcompressor's OWL row only in the implementation.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time

import numpy as np


def load_model(path: str):
    """(cfg, params) of a MODEL_DIR, with the loader of commit 6880132 or of later trees."""
    try:
        from prunejax.convert import load_any
    except ImportError:
        from prunejax import load

        model = load(path)
        return model.cfg, model.params
    return load_any(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--calib", required=True)
    p.add_argument("--other", required=True)
    p.add_argument("--ratios-from", required=True)
    p.add_argument("--run", default="owl 0.7")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()

    from prunejax import calibrate
    from prunejax.data.store import TokenStore
    from prunejax.prune.masks import PROJECTIONS
    from prunejax.prune.owl import matrix_counts, matrix_shape
    from prunejax.prune.sparse import wanda_pass

    rows = [json.loads(line) for line in open(args.ratios_from)]
    row = [r for r in rows if r["name"] == args.run][-1]
    by_layer = row["owl_layer_sparsity"]  # "model.layers.N" -> sparsity
    ratios = [by_layer[k] for k in sorted(by_layer, key=lambda k: int(k.rsplit(".", 1)[1]))]
    target = float(np.mean(ratios))

    cfg, params = load_model(args.model)
    keys = sorted(params["layers"], key=int)
    if len(keys) != len(ratios):
        raise SystemExit(f"{len(ratios)} layer sparsities for {len(keys)} layers")

    def size(k: str, name: str, block: str) -> int:
        return math.prod(matrix_shape(name, np.shape(params["layers"][k][block][name])))

    sizes_LP = np.array([[size(k, name, block) for name, (block, _) in PROJECTIONS.items()] for k in keys], np.int64)
    counts = matrix_counts(ratios, sizes_LP, round(target, 6))
    count = {(k, name): int(counts[i, j]) for i, k in enumerate(keys) for j, name in enumerate(PROJECTIONS)}

    t0 = time.time()
    tokens = calibrate.calibration_tokens(args.calib, args.calib_samples, args.calib_seq_len)
    params, _ = wanda_pass(cfg, params, tokens, lambda k, name, shape: count[k, name], batch_size=args.batch_size)
    seconds = time.time() - t0
    out = {
        "name": f"prunejax wanda at llmcompressor's '{args.run}' allocation",
        "seconds": seconds,
        "target": target,
        "realized_ratio": float(counts.sum() / sizes_LP.sum()),
        "layer_ratios": (counts.sum(axis=1) / sizes_LP.sum(axis=1)).round(5).tolist(),
    }
    for label, data_dir in (("calib_domain", args.calib), ("other_domain", args.other)):
        store = TokenStore(data_dir)
        toks = store.read("validation", 0, args.eval_windows * args.eval_seq_len)
        toks = toks.reshape(args.eval_windows, args.eval_seq_len)
        out[label] = math.exp(calibrate.lm_loss(cfg, params, toks, batch_size=args.batch_size))
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
