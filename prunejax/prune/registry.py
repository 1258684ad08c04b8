"""The pruning methods by name: a plain dict that grep can follow.

Every method is `fn(cfg, params, tokens_NL, *, ratio=None, target=None, pattern=None, batch_size=8,
mesh=None) -> PruneResult`; calibration tokens [N, L] may be None for methods that need none
(magnitude). A `mesh` splits each calibration batch over its (data, fsdp) axes (see
`prunejax.calibrate`); Sheared trains on it instead of the mesh its config names. OWL also takes
`owl_m=`, `owl_lambda=` and `owl_map=` (see `prunejax.prune.owl`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from prunejax.config import LlamaConfig
from prunejax.prune.depth import minitron_depth, shortgpt
from prunejax.prune.masks import PruneError
from prunejax.prune.owl import owl
from prunejax.prune.result import PruneResult
from prunejax.prune.sheared import sheared
from prunejax.prune.sparse import magnitude, sparsegpt, wanda
from prunejax.prune.width import minitron_width

Method = Callable[..., PruneResult]

METHODS: dict[str, Method] = {
    "magnitude": magnitude,
    "wanda": wanda,
    "sparsegpt": sparsegpt,
    "owl": owl,
    "minitron-depth": minitron_depth,
    "shortgpt": shortgpt,
    "minitron-width": minitron_width,
    "sheared": sheared,
}
# Methods that zero weights under masks and keep every shape; on a sparse model their masks are composed.
SPARSE = frozenset({"magnitude", "wanda", "sparsegpt", "owl"})
# Methods that remove whole decoder layers (their report names `removed_layers`); on a sparse model the
# surviving layers keep their masks.
DEPTH = frozenset({"minitron-depth", "shortgpt"})
# Methods whose scores ignore the calibration data.
NO_CALIBRATION = frozenset({"magnitude", "sheared"})
# Methods that train on a token budget of a DATA_DIR (options data=, prune_tokens=, config=, run_dir=).
TRAINED = frozenset({"sheared"})


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise PruneError(f"unknown pruning method {name!r}; valid methods: {', '.join(sorted(METHODS))}") from None


def prune(
    cfg: LlamaConfig, params: dict[str, Any], method: str, tokens_NL: np.ndarray | None = None, **options: Any
) -> PruneResult:
    """Run a method by name on dense (cfg, params) (options: ratio, target, pattern, batch_size, mesh); a
    model with masks is pruned by `prunejax.prune`, which composes or carries them."""
    fn = get_method(method)
    if tokens_NL is None and method not in NO_CALIBRATION:
        raise PruneError(f"{method} needs calibration tokens")
    return fn(cfg, params, tokens_NL, **options)
