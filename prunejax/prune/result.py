"""What every pruning method returns, and the ratio bookkeeping shared by all of them."""

from __future__ import annotations

import dataclasses
from typing import Any

from prunejax.config import LlamaConfig
from prunejax.prune.shapes import linear_ratio
from prunejax.tree import sparsity

Params = dict[str, Any]


@dataclasses.dataclass
class PruneResult:
    """A pruned model: its config and params, boolean masks (sparse methods only) and a JSON-able report."""

    cfg: LlamaConfig
    params: Params
    masks: Params | None
    report: dict[str, Any]


def structured_result(parent: LlamaConfig, cfg: LlamaConfig, params: Params, report: dict[str, Any]) -> PruneResult:
    """Record the realized ratio (projection weights removed) beside the method's own report."""
    report = {**report, "realized_ratio": linear_ratio(parent, cfg), "shape": shape_of(cfg)}
    return PruneResult(cfg, params, None, report)


def sparse_result(cfg: LlamaConfig, params: Params, masks: Params, report: dict[str, Any]) -> PruneResult:
    """Sparse methods remove nothing from shapes; the realized ratio is the masked fraction."""
    sp = sparsity(masks)
    # Masks cover exactly the projections, so their pruned fraction is the pruning ratio as defined.
    report = {**report, "realized_ratio": sp["mask_sparsity"], "per_layer": sp["per_layer"], "shape": shape_of(cfg)}
    return PruneResult(cfg, params, masks, report)


def shape_of(cfg: LlamaConfig) -> dict[str, int]:
    return {
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "ffn": cfg.intermediate_size,
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
    }
