"""Depth pruning: remove whole decoder layers (Minitron-Depth, ShortGPT).

  minitron-depth  slide a window of `removed` contiguous layers over every start; drop the block
                  whose removal keeps the calibration LM loss closest to the unpruned model's
  shortgpt        Block Influence BI_i = 1 - mean over tokens of cos(h_in, h_out) of layer i on the
                  dense model; drop the `removed` layers with the lowest BI (ties: the earlier layer)
Both keep the surviving layers in order and renumber them (`keep(params, "layers", ...)`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax.sharding import Mesh

from prunejax import calibrate
from prunejax.config import LlamaConfig
from prunejax.prune.keep import shrink
from prunejax.prune.masks import PruneError
from prunejax.prune.request import Request, pruning_method
from prunejax.prune.result import PruneResult, structured_result
from prunejax.prune.shapes import Target, resolve_target

Params = dict[str, Any]


def _layers_to_keep(
    cfg: LlamaConfig, method: str, ratio: float | None, target: Target | None, pattern: Any
) -> tuple[int, str]:
    if pattern is not None:
        raise PruneError(f"{method} removes layers; an N:M pattern applies to sparse methods only")
    tgt, how = resolve_target(cfg, method, "depth", ratio, target)
    if tgt.hidden is not None or tgt.ffn is not None or tgt.heads is not None:
        raise PruneError(f"{method} only changes the number of layers; the target may name only layers=")
    if tgt.layers is None or tgt.layers >= cfg.num_hidden_layers:
        raise PruneError(f"{method}: target layers must be below the model's {cfg.num_hidden_layers}")
    return tgt.layers, how


@pruning_method
def minitron_depth(
    cfg: LlamaConfig,
    params: Params,
    tokens_NL: np.ndarray | None,
    req: Request,
) -> PruneResult:
    """Drop the contiguous block whose removal keeps calibration LM loss lowest."""
    ratio, target, pattern, batch_size, mesh = req.ratio, req.target, req.pattern, req.batch_size, req.mesh
    keep_n, how = _layers_to_keep(cfg, "minitron-depth", ratio, target, pattern)
    removed = cfg.num_hidden_layers - keep_n
    losses, dense = calibrate.block_removal_losses(cfg, params, tokens_NL, removed, batch_size=batch_size, mesh=mesh)
    start = int(np.argmin(np.abs(losses - dense)))  # closest to the dense loss; ties: the earliest start
    kept = [i for i in range(cfg.num_hidden_layers) if not start <= i < start + removed]
    new_cfg, new_params = shrink(cfg, params, "layers", kept)
    report = {
        "method": "minitron-depth",
        "target_from": how,
        "removed_layers": list(range(start, start + removed)),
        "dense_loss": dense,
        "block_losses": {str(s): float(v) for s, v in enumerate(losses)},
    }
    return structured_result(cfg, new_cfg, new_params, report)


def block_influence(
    cfg: LlamaConfig, params: Params, tokens_NL: np.ndarray, *, batch_size: int = 8, mesh: Mesh | None = None
) -> np.ndarray:
    """BI per layer [n] on the dense model."""
    _, stats = calibrate.sequential(cfg, params, tokens_NL, ("cosine",), batch_size=batch_size, mesh=mesh)
    return np.array([1.0 - stats[k]["cosine"] / stats[k]["tokens"] for k in sorted(stats, key=int)])


@pruning_method
def shortgpt(
    cfg: LlamaConfig,
    params: Params,
    tokens_NL: np.ndarray | None,
    req: Request,
) -> PruneResult:
    """Drop the layers with the lowest Block Influence."""
    ratio, target, pattern, batch_size, mesh = req.ratio, req.target, req.pattern, req.batch_size, req.mesh
    keep_n, how = _layers_to_keep(cfg, "shortgpt", ratio, target, pattern)
    bi = block_influence(cfg, params, tokens_NL, batch_size=batch_size, mesh=mesh)
    removed = sorted(int(i) for i in np.argsort(bi, kind="stable")[: cfg.num_hidden_layers - keep_n])
    kept = [i for i in range(cfg.num_hidden_layers) if i not in removed]
    new_cfg, new_params = shrink(cfg, params, "layers", kept)
    report = {
        "method": "shortgpt",
        "target_from": how,
        "removed_layers": removed,
        "block_influence": {str(i): float(v) for i, v in enumerate(bi)},
    }
    return structured_result(cfg, new_cfg, new_params, report)
