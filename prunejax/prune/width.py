"""Width pruning (Minitron-Width): hidden channels shared by all layers, FFN neurons per layer,
optionally whole GQA groups of heads; every result is a standard Llama config.

Importance is activation-based, measured once on the dense model (`prunejax.calibrate`, `act`):
for each calibration sequence, the mean over positions of |activation|; then the L2 norm over
sequences (Minitron's batch=L2, sequence=mean aggregation). The activations are
  hidden channel d   the outputs of both RMSNorms of every layer (summed in square over layers)
  FFN neuron f       the input of `down_proj` in its layer
  head n             the L2 norm of head n's attention output (before `o_proj`); a kv group's score
                     is the sum of its q-heads' scores, and heads are removed a whole group at a time
Every layer keeps the same number of FFN neurons (its own best ones), so one `intermediate_size`
describes the model; heads are kept unless the target names `heads=`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax.sharding import Mesh

from prunejax import calibrate
from prunejax.config import LlamaConfig
from prunejax.prune.keep import shrink, shrink_heads
from prunejax.prune.masks import PruneError
from prunejax.prune.request import Request, pruning_method
from prunejax.prune.result import PruneResult, structured_result
from prunejax.prune.shapes import apply_target, resolve_target

Params = dict[str, Any]


def top_indices(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` highest scores, in increasing index order (ties: the lower index wins)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return np.sort(order[:count])


def width_importance(
    cfg: LlamaConfig, params: Params, tokens_NL: np.ndarray, *, batch_size: int = 8, mesh: Mesh | None = None
) -> dict[str, Any]:
    """{'embed': [D], 'mlp': {layer: [F]}, 'heads': {layer: [N]}} on the dense model."""
    _, stats = calibrate.sequential(cfg, params, tokens_NL, ("act",), batch_size=batch_size, mesh=mesh)
    keys = sorted(stats, key=int)
    return {
        "embed": np.sqrt(sum(stats[k]["act"]["embed"] for k in keys)),
        "mlp": {k: np.sqrt(stats[k]["act"]["mlp"]) for k in keys},
        "heads": {k: np.sqrt(stats[k]["act"]["heads"]) for k in keys},
    }


@pruning_method
def minitron_width(
    cfg: LlamaConfig,
    params: Params,
    tokens_NL: np.ndarray | None,
    req: Request,
) -> PruneResult:
    """Keep the most active hidden channels, FFN neurons (and kv groups when `heads=` is given)."""
    ratio, target, pattern, batch_size, mesh = req.ratio, req.target, req.pattern, req.batch_size, req.mesh
    if pattern is not None:
        raise PruneError("minitron-width removes channels; an N:M pattern applies to sparse methods only")
    tgt, how = resolve_target(cfg, "minitron-width", "width", ratio, target)
    if tgt.layers is not None:
        raise PruneError("minitron-width keeps every layer; the target may name hidden=, ffn= and heads=")
    goal = apply_target(cfg, tgt)
    imp = width_importance(cfg, params, tokens_NL, batch_size=batch_size, mesh=mesh)
    new_cfg, new_params = cfg, params
    if goal.num_key_value_heads < cfg.num_key_value_heads:
        group = cfg.num_attention_heads // cfg.num_key_value_heads
        kv_index = {
            k: top_indices(h.reshape(cfg.num_key_value_heads, group).sum(axis=1), goal.num_key_value_heads)
            for k, h in imp["heads"].items()
        }
        new_cfg, new_params = shrink_heads(new_cfg, new_params, kv_index)
    if goal.intermediate_size < cfg.intermediate_size:
        mlp_index = {k: top_indices(f, goal.intermediate_size) for k, f in imp["mlp"].items()}
        new_cfg, new_params = shrink(new_cfg, new_params, "mlp", mlp_index)
    if goal.hidden_size < cfg.hidden_size:
        new_cfg, new_params = shrink(new_cfg, new_params, "embed", top_indices(imp["embed"], goal.hidden_size))
    report = {"method": "minitron-width", "target_from": how, "reduction": "per-sequence mean |a|, L2 over sequences"}
    return structured_result(cfg, new_cfg, new_params, report)
