"""Scratch baselines for a pruned model, and the token budgets of the paper's two settings.

Shapes:
  * same   — the pruned model's own architecture (the paper's baseline); for sparse models the
             paper's control: the same mask, kept weights re-initialized (`train --reinit`).
  * params — a dense model whose parameter count (embeddings included, sparse projections counted
             at their density) is closest to the pruned model's.
  * flops  — a dense model whose training FLOPs per token (from actual shapes at the study's
             sequence length, sparsity included) are closest to the pruned model's.
For `params`/`flops` the search keeps the pruned model's depth, heads and head_dim and scales
hidden and FFN together at the parent's FFN/hidden ratio, in steps of `multiple` (default the
parent's hidden/64, at least 8); the closest match wins and ties go to the larger hidden size.
The matched value and its relative error are returned so the report can state what was matched
and how well.

Budgets (tokens seen by the scratch model):
  * equal_train — S_R vs P-R_R: the scratch model gets the retraining budget R;
  * equal_total — S_{P+R} vs P-R_R: it also gets the parent's P pretraining tokens, plus (when the
                  study counts them) the tokens spent inside pruning (calibration, Sheared's stage).
"""

from __future__ import annotations

import dataclasses

from prunejax.config import LlamaConfig


def effective_params(cfg: LlamaConfig, density: float = 1.0) -> float:
    """Parameters that can be nonzero: projections at `density`, everything else dense."""
    return cfg.num_params() - cfg.linear_params() * (1.0 - density)


def training_flops_per_token(cfg: LlamaConfig, seq_len: int, density: float = 1.0) -> float:
    return cfg.flops_per_token(seq_len, training=True, linear_density=density)


@dataclasses.dataclass(frozen=True)
class Match:
    cfg: LlamaConfig
    quantity: str  # "params" or "flops"
    target: float
    achieved: float

    @property
    def rel_error(self) -> float:
        return self.achieved / self.target - 1.0


def _round(x: float, multiple: int) -> int:
    return max(multiple, int(round(x / multiple)) * multiple)


def matched_config(
    parent: LlamaConfig,
    pruned: LlamaConfig,
    *,
    density: float = 1.0,
    quantity: str = "params",
    seq_len: int = 2048,
    multiple: int | None = None,
) -> Match:
    """The dense architecture matching the pruned model's parameters or training FLOPs (module rule)."""
    if quantity not in ("params", "flops"):
        raise ValueError(f"quantity must be 'params' or 'flops', got {quantity!r}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    multiple = multiple or max(8, parent.hidden_size // 64)

    def measure(cfg: LlamaConfig, dens: float) -> float:
        if quantity == "params":
            return effective_params(cfg, dens)
        return training_flops_per_token(cfg, seq_len, dens)

    target = measure(pruned, density)
    aspect = parent.intermediate_size / parent.hidden_size
    best: tuple[float, int, LlamaConfig] | None = None
    for hidden in range(multiple, parent.hidden_size + 1, multiple):
        cand = pruned.replace(hidden_size=hidden, intermediate_size=_round(hidden * aspect, multiple))
        err = abs(measure(cand, 1.0) - target)
        if best is None or err < best[0] or (err == best[0] and hidden > best[1]):
            best = (err, hidden, cand)
    assert best is not None
    return Match(best[2], quantity, target, measure(best[2], 1.0))


def scratch_tokens(
    setting: str, *, parent_tokens: int, budget: int, pruning_tokens: int = 0, count_pruning_tokens: bool = False
) -> int:
    """Tokens for the scratch model that is compared with P-R_budget under `setting`."""
    if setting == "equal_train":
        return budget
    if setting == "equal_total":
        return parent_tokens + budget + (pruning_tokens if count_pruning_tokens else 0)
    raise ValueError(f"unknown scratch setting {setting!r}")
