"""The same one-shot pruning with llmcompressor (PyTorch), on the same calibration and evaluation tokens.

Runs in its own environment (llmcompressor pins its own transformers; `benchmarks/llmcompressor/setup.sh`
builds it: torch 2.13.0 CPU, llmcompressor 0.14.0.1), e.g.
  bash benchmarks/llmcompressor/setup.sh /work/llmc-venv
  /work/llmc-venv/bin/python benchmarks/prune_llmcompressor.py --model /tmp/smol --calib /tmp/kjv \
      --other /tmp/pydoc --calib-samples 16 --calib-seq-len 512 --eval-windows 8 --eval-seq-len 512

It reads DATA_DIR shards directly (no prunejax import: that environment has no JAX), prunes with
`SparseGPTModifier` / `WandaPruningModifier` on the decoder layers' Linear modules (LM head ignored),
and reports perplexity over the same non-overlapping validation windows as `benchmarks/prune.py`.
Each run is a subprocess so its wall time and peak RSS are its own. Every run also reports the zero
fraction of each decoder layer's Linear weights (`layer_zero_fraction`), the ground truth of what
was pruned where.

OWL (`owl`, `owl 0.7`): `WandaPruningModifier(sparsity_profile="owl", owl_m=5, owl_lmbda=0.08)`.
llmcompressor 0.14.0.1 cannot run that as shipped; `RecordedOWL` below changes the plumbing only,
never the allocation or the pruning:
  * its OWL statistics pass (run from the modifier's initialize) fires calibration lifecycle events
    before the lifecycle is initialized, which raises "Cannot invoke event before initializing";
    the pass runs here with those events dropped (it is a plain forward pass with its own hooks);
  * its allocation returns a dict keyed by decoder layer, but the hook registration picks a layer's
    sparsity out of a list by position and would hand the whole dict to every layer; the same
    values are passed on as a list in target-layer order;
  * it checks one sparsity per *target*, so the targets are the decoder layers (`LlamaDecoderLayer`,
    whose Linear modules are then pruned) instead of `Linear`.
The run also reports llmcompressor's per-layer sparsities (`owl_layer_sparsity`, exactly what its
allocation returned) and each layer's outlier ratio D computed from the same activation statistics
(`owl_outlier_ratio`, a fraction, M = owl_m).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time

import numpy as np
from one_per_process import file_name, run_each

# name -> (method, mask structure, sparsity)
RUNS = {
    "dense": None,
    "wanda": ("wanda", "0:0", 0.5),
    "wanda 2:4": ("wanda", "2:4", 0.5),
    "sparsegpt": ("sparsegpt", "0:0", 0.5),
    "sparsegpt 2:4": ("sparsegpt", "2:4", 0.5),
    # OWL (issue 27) beside Wanda at 0.5 and 0.7; the paper's M = 5, λ = 0.08
    "owl": ("owl", "0:0", 0.5),
    "wanda 0.7": ("wanda", "0:0", 0.7),
    "owl 0.7": ("owl", "0:0", 0.7),
}
OWL_M, OWL_LAMBDA = 5, 0.08


def read_split(data_dir: str, split: str, count: int) -> np.ndarray:
    """The first `count` tokens of a split, straight from the shard files listed in meta.json."""
    with open(os.path.join(data_dir, "meta.json")) as f:
        meta = json.load(f)
    parts, need = [], count
    for shard in meta["splits"][split]["shards"]:
        m = np.memmap(os.path.join(data_dir, shard["file"]), dtype=np.dtype(meta["dtype"]), mode="r")
        parts.append(np.asarray(m[:need], np.int64))
        need -= len(parts[-1])
        if need == 0:
            break
    if need:
        raise SystemExit(f"{data_dir}: split {split} has fewer than {count} tokens")
    return np.concatenate(parts)


def perplexity(model, tokens_NL: np.ndarray, batch_size: int) -> float:
    import torch

    total = 0.0
    with torch.no_grad():
        for s in range(0, len(tokens_NL), batch_size):
            batch = torch.as_tensor(tokens_NL[s : s + batch_size])
            logits = model(batch).logits[:, :-1].float()
            logp = torch.log_softmax(logits, -1)
            total += -logp.gather(-1, batch[:, 1:, None]).sum().item()
    return math.exp(total / (tokens_NL.shape[0] * (tokens_NL.shape[1] - 1)))


def recorded_owl(record: dict, **kwargs):
    """llmcompressor's OWL Wanda modifier, runnable in 0.14.0.1 and recording its allocation (module doc)."""
    from unittest import mock

    import torch
    from llmcompressor.core import LifecycleCallbacks
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    class RecordedOWL(WandaPruningModifier):
        def _get_activations(self, model, dataloader, nsamples=128):
            with mock.patch.object(LifecycleCallbacks, "event", classmethod(lambda cls, *a, **k: None)):
                acts = super()._get_activations(model, dataloader, nsamples)
            record["acts"] = acts
            return acts

        def _infer_owl_layer_sparsity(self, model, layers, dataloader):
            by_layer = super()._infer_owl_layer_sparsity(model, layers, dataloader)
            acts = record.pop("acts")
            outliers = {}
            for layer_name, layer in layers.items():  # the weights are still dense here
                above = size = 0
                scores = [
                    m.weight.detach().abs() * acts[f"{layer_name}.{n}"][None, :]
                    for n, m in layer.named_modules()
                    if isinstance(m, torch.nn.Linear)
                ]
                mean = sum(float(x.double().sum()) for x in scores) / sum(x.numel() for x in scores)
                for x in scores:
                    above, size = above + int((x > self.owl_m * mean).sum()), size + x.numel()
                outliers[layer_name] = above / size
            record["owl_outlier_ratio"] = outliers
            record["owl_layer_sparsity"] = {k: float(v) for k, v in by_layer.items()}
            return [float(by_layer[k]) for k in self._target_layers]

    return RecordedOWL(**kwargs)


def layer_zero_fraction(model) -> dict[str, float]:
    """Per decoder layer: the fraction of its Linear weights (7 projections together) that are zero."""
    zeros: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for n, p in model.named_parameters():
        if ".layers." in n and p.ndim == 2:
            layer = n.split(".layers.")[1].split(".")[0]
            zeros[layer] = zeros.get(layer, 0) + int((p == 0).sum())
            sizes[layer] = sizes.get(layer, 0) + p.numel()
    return {k: zeros[k] / sizes[k] for k in sorted(zeros, key=int)}


def run_one(name: str, args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(args.seed)  # llmcompressor shuffles the calibration samples
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, trust_remote_code=False)
    t0 = time.time()
    record: dict = {}
    if RUNS[name] is not None:
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning import WandaPruningModifier
        from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

        method, structure, sparsity = RUNS[name]
        calib = read_split(args.calib, "train", args.calib_samples * args.calib_seq_len)
        calib = calib.reshape(args.calib_samples, args.calib_seq_len)
        ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": np.ones_like(calib).tolist()})
        # `ignore=["lm_head"]` is NOT enough in llmcompressor 0.14: the sequential pipeline makes
        # lm_head its own target layer, the modifier names its Linear "lm_head." and the exact-name
        # match misses it, so the (tied!) head and embedding get pruned too. The regex form matches.
        common = dict(sparsity=sparsity, mask_structure=structure, targets=["Linear"], ignore=["re:.*lm_head"])
        if method == "sparsegpt":
            modifier = SparseGPTModifier(block_size=128, dampening_frac=0.01, **common)
        elif method == "owl":  # one sparsity per target: the targets are the decoder layers (module doc)
            common["targets"] = [type(model.model.layers[0]).__name__]
            owl = dict(sparsity_profile="owl", owl_m=OWL_M, owl_lmbda=OWL_LAMBDA)
            modifier = recorded_owl(record, **common, **owl)
        else:
            modifier = WandaPruningModifier(**common)
        oneshot(
            model=model,
            dataset=ds,
            recipe=[modifier],
            num_calibration_samples=args.calib_samples,
            max_seq_length=args.calib_seq_len,
            pipeline="sequential",
        )
    seconds = time.time() - t0
    model.eval()
    if args.save_weights:
        from safetensors.torch import save_file

        os.makedirs(args.save_weights, exist_ok=True)
        weights = {n: p.detach().contiguous() for n, p in model.named_parameters()}
        save_file(weights, os.path.join(args.save_weights, file_name(name) + ".safetensors"))
    zeros = total = 0
    for n, p in model.named_parameters():
        if "layers." in n and p.ndim == 2:
            zeros += int((p == 0).sum())
            total += p.numel()
    embed = model.get_input_embeddings().weight
    out = {"name": name, "seconds": seconds, "zero_fraction": zeros / total}
    out["layer_zero_fraction"] = layer_zero_fraction(model)
    out.update(record)
    out["embedding_zero_fraction"] = float((embed == 0).float().mean())  # must stay the dense model's
    for label, data_dir in (("calib_domain", args.calib), ("other_domain", args.other)):
        toks = read_split(data_dir, "validation", args.eval_windows * args.eval_seq_len)
        out[label] = perplexity(model, toks.reshape(args.eval_windows, args.eval_seq_len), args.batch_size)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--calib", required=True)
    p.add_argument("--other", required=True)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="torch seed (the order of the calibration samples)")
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--save-weights", help="directory for each run's pruned weights (RUN.safetensors)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--out-json", default="llmcompressor_results.jsonl")
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    run_each(__file__, args.runs.split(","), args.out_json, "zero_fraction")


if __name__ == "__main__":
    main()
