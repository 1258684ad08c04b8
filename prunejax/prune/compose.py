"""Pruning a `Model` value, whose masks come along: composed, carried or refused, never dropped.

A dense model is pruned by its method as it is. On a sparse model (one with masks):
  * a sparse method's masks are ANDed with the model's (a weight pruned once stays pruned) and the realized
    ratio is the pruned fraction of the composition, which is the zero fraction of the counted projections;
  * a depth method removes whole layers, so the surviving layers keep their masks, renumbered with them;
  * every other method (width, heads, Sheared) slices rows or heads out of masked matrices, which the
    methods do not report in a form the masks could follow, so it is refused before any work.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prunejax import hf
from prunejax.config import LlamaConfig
from prunejax.modelio import Model
from prunejax.prune.masks import PruneError
from prunejax.prune.masks import compose as and_masks
from prunejax.prune.registry import DEPTH, NO_CALIBRATION, SPARSE, get_method
from prunejax.prune.result import PruneResult, sparse_result
from prunejax.tree import apply_masks, sparsity

Params = dict[str, Any]


def check_composable(method: str, name: str, because: str = "it has masks") -> None:
    """A PruneError, before any work, when `method` cannot carry the masks of the sparse model `name`."""
    get_method(method)
    if method in SPARSE or method in DEPTH:
        return
    raise PruneError(
        f"{name} is sparse ({because}): {method} removes whole rows or heads and would drop those masks; "
        f"prune structurally first and sparsify after, or use a sparse method ({', '.join(sorted(SPARSE))}) "
        f"or a depth method ({', '.join(sorted(DEPTH))}), which keep them"
    )


def composed_result(result: PruneResult, input_masks: Params) -> PruneResult:
    """A sparse method's result on an already sparse model: its masks ANDed with the input's, the weights
    zeroed where either prunes, and the realized ratio of the composition (what the model now is)."""
    if result.masks is None:
        raise PruneError(f"{result.report.get('method')} returns no masks, so it cannot compose with the input's")
    masks = and_masks(input_masks, result.masks)
    report = {
        **result.report,
        "method_realized_ratio": result.report["realized_ratio"],
        "input_sparsity": sparsity(input_masks)["mask_sparsity"],
    }
    return sparse_result(result.cfg, apply_masks(result.params, masks), masks, report)


def survivors_masks(parent: LlamaConfig, input_masks: Params, removed: list[int]) -> Params:
    """The masks of the layers a depth method kept, renumbered 0.. in order as the layers are."""
    kept = [i for i in range(parent.num_hidden_layers) if i not in set(removed)]
    out = {k: v for k, v in input_masks.items() if k != "layers"}
    layers = input_masks.get("layers", {})
    out["layers"] = {str(new): layers[str(old)] for new, old in enumerate(kept) if str(old) in layers}
    return out


def carried_result(parent: LlamaConfig, result: PruneResult, input_masks: Params) -> PruneResult:
    """A depth method's result on a sparse model: the survivors keep their masks. `realized_ratio` stays the
    fraction of projection weights removed; `overall_ratio` counts removed and zeroed weights together."""
    removed = result.report.get("removed_layers")
    if removed is None:
        raise PruneError(f"{result.report.get('method')} does not report the layers it removed; cannot carry masks")
    masks = survivors_masks(parent, input_masks, removed)
    sp = sparsity(masks)
    report = {
        **result.report,
        "input_sparsity": sparsity(input_masks)["mask_sparsity"],
        "mask_sparsity": sp["mask_sparsity"],
        "per_layer": sp["per_layer"],
        "overall_ratio": 1.0 - (result.cfg.linear_params() - sp["pruned_weights"]) / parent.linear_params(),
    }
    return PruneResult(result.cfg, apply_masks(result.params, masks), masks, report)


def prune(model: Model, method: str, calib_tokens: np.ndarray | None = None, **options: Any) -> Model:
    """`model` pruned by `method` (options: ratio=, target=, pattern=, batch_size=, mesh=, and the method's
    own), its masks composed or carried (see the module doc). The result's provenance records the method, the
    requested and realized ratio and the method's report, with the input's provenance as `parent_provenance`."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be a prunejax.Model (prunejax.load gives one), got {type(model).__name__}")
    name = model.source or "the model"
    if model.masks:
        check_composable(method, name)
    if calib_tokens is None and method not in NO_CALIBRATION:
        raise PruneError(f"{method} needs calibration tokens [N, L] (prunejax.calibration_tokens reads them)")
    ids = np.asarray(calib_tokens) if calib_tokens is not None else None
    if ids is not None and (ids.min() < 0 or ids.max() >= model.cfg.vocab_size):  # a gather past it is silent
        raise PruneError(f"calib_tokens: token ids outside the model's vocabulary [0, {model.cfg.vocab_size})")
    params = apply_masks(model.params, model.masks)  # the method sees the sparse model, even if edited since
    hf.check_finite(params, name)  # magnitude would pass a NaN through; calibration would fail late
    result = get_method(method)(model.cfg, params, calib_tokens, **options)
    if model.masks and method in SPARSE:
        result = composed_result(result, model.masks)
    elif model.masks:
        result = carried_result(model.cfg, result, model.masks)
    report = {**result.report, "requested_ratio": options.get("ratio")}
    provenance = {
        "stage": "prune",
        "parent": model.source,
        "parent_provenance": model.provenance,
        "method": method,
        "requested_ratio": report["requested_ratio"],
        "realized_ratio": report["realized_ratio"],
        **{k: report[k] for k in ("input_sparsity", "overall_ratio", "prune_tokens") if k in report},
        "report": report,
    }
    return Model(result.cfg, result.params, result.masks, source=model.source, provenance=provenance)
