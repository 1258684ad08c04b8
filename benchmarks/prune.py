"""One-shot pruning of a real model with every method: perplexity, wall time and peak memory.

  python benchmarks/prune.py --model /tmp/smol --calib /tmp/kjv --other /tmp/pydoc \
      --calib-samples 32 --calib-seq-len 512 --eval-windows 16 --eval-seq-len 512 --out-md results.md

Each method runs in its own subprocess (`--one NAME`) so its peak resident memory is its own.
Perplexity is exp(mean next-token loss) over non-overlapping windows taken from the start of the
validation split of each DATA_DIR (the calibration's domain and another one); the pruned params are
evaluated in memory, exactly as `prunejax prune` would write them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time

from one_per_process import file_name, run_each

RUNS: dict[str, tuple[str, dict]] = {
    "dense": ("", {}),
    "magnitude": ("magnitude", {"ratio": 0.5}),
    "magnitude 2:4": ("magnitude", {"pattern": (2, 4)}),
    "wanda": ("wanda", {"ratio": 0.5}),
    "wanda 2:4": ("wanda", {"pattern": (2, 4)}),
    "sparsegpt": ("sparsegpt", {"ratio": 0.5}),
    "sparsegpt 2:4": ("sparsegpt", {"pattern": (2, 4)}),
    "minitron-depth": ("minitron-depth", {"ratio": 0.5}),
    "shortgpt": ("shortgpt", {"ratio": 0.5}),
    "minitron-width": ("minitron-width", {"ratio": 0.5}),
    # OWL (issue 27) beside Wanda and magnitude at 0.5 and 0.7; the paper's M = 5, λ = 0.08
    "owl": ("owl", {"ratio": 0.5}),
    "magnitude 0.7": ("magnitude", {"ratio": 0.7}),
    "wanda 0.7": ("wanda", {"ratio": 0.7}),
    "owl 0.7": ("owl", {"ratio": 0.7}),
}


def eval_tokens(data_dir: str, windows: int, seq_len: int):
    from prunejax.data.store import TokenStore

    store = TokenStore(data_dir)
    have = store.num_tokens("validation") // seq_len
    n = min(windows, have)
    return store.read("validation", 0, n * seq_len).reshape(n, seq_len)


def run_one(name: str, args: argparse.Namespace) -> dict:
    from prunejax import calibrate, load
    from prunejax.prune.registry import prune

    model = load(args.model)
    cfg, params = model.cfg, model.params
    method, options = RUNS[name]
    t0 = time.time()
    realized, extra = 0.0, {}
    if method:
        tokens = calibrate.calibration_tokens(args.calib, args.calib_samples, args.calib_seq_len)
        result = prune(cfg, params, method, tokens, batch_size=args.batch_size, **options)
        cfg, params, realized = result.cfg, result.params, result.report["realized_ratio"]
        if method == "owl":  # the allocation: each layer's outlier ratio, planned and realized ratio
            extra = {k: result.report[k] for k in ("outlier_ratios", "layer_ratios", "per_layer")}
    seconds = time.time() - t0
    if args.save_dir and method:
        from prunejax import hf

        out = os.path.join(args.save_dir, file_name(name))
        hf.save(out, cfg, params, result.masks, provenance={"benchmark": name}, overwrite=True)
    ppl = {}
    for label, data_dir in (("calib_domain", args.calib), ("other_domain", args.other)):
        toks = eval_tokens(data_dir, args.eval_windows, args.eval_seq_len)
        ppl[label] = math.exp(calibrate.lm_loss(cfg, params, toks, batch_size=args.batch_size))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"name": name, "seconds": seconds, "peak_rss_mib": peak_mib, "realized_ratio": realized, **ppl, **extra}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--calib", required=True, help="DATA_DIR: calibration (train split) and in-domain eval")
    p.add_argument("--other", required=True, help="DATA_DIR of another domain (validation split)")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of: " + ", ".join(RUNS))
    p.add_argument("--save-dir", help="write each pruned model as a MODEL_DIR under this directory")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--out-json", default="prune_results.jsonl")
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    run_each(__file__, args.runs.split(","), args.out_json, "realized_ratio")


if __name__ == "__main__":
    main()
