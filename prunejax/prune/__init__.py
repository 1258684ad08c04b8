"""Pruning methods as pure functions over (cfg, params); see `registry.METHODS` and `registry.prune`.

`prunejax.prune(model, ...)` (the public API, `prune.compose`) is the one that carries masks; the pure
function on a dense pytree is `prunejax.prune.registry.prune(cfg, params, ...)`, not re-exported here so
that `from prunejax.prune import prune` cannot stand in for the public one and drop a model's masks."""

from prunejax.prune.keep import keep, shrink, shrink_heads
from prunejax.prune.masks import PruneError, parse_pattern
from prunejax.prune.registry import METHODS, get_method
from prunejax.prune.result import PruneResult
from prunejax.prune.shapes import Target, parse_target
from prunejax.tree import apply_masks

__all__ = [
    "METHODS",
    "PruneError",
    "PruneResult",
    "Target",
    "apply_masks",
    "get_method",
    "keep",
    "parse_pattern",
    "parse_target",
    "shrink",
    "shrink_heads",
]
