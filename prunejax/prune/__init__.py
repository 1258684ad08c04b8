"""Pruning methods as pure functions over (cfg, params); see `registry.METHODS`."""

from prunejax.prune.keep import keep, shrink, shrink_heads
from prunejax.prune.masks import PruneError, parse_pattern
from prunejax.prune.registry import METHODS, get_method, prune
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
    "prune",
    "shrink",
    "shrink_heads",
]
