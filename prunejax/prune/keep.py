"""Structured pruning as one generic operation: keep these indices along a logical axis.

The axis names are those of `prunejax.sharding.LOGICAL_AXES` (vocab, embed, q_heads, kv_heads,
head_dim, mlp) plus `layers` for depth. Removing FFN neurons is `keep(params, "mlp", idx)`, hidden
channels are `embed` (embedding, every projection, every norm, the LM head), depth is `layers`
(kept layers are renumbered 0..n'-1 in their original order). `shrink` also returns the config
that describes the result, so `(new_cfg, new_params)` always agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prunejax.config import LlamaConfig
from prunejax.prune.masks import PruneError
from prunejax.sharding import logical_axes

Params = dict[str, Any]
Index = jax.Array | np.ndarray | Sequence[int]

# Logical axis -> the config field that sizes it.
AXIS_FIELDS: dict[str, str] = {
    "vocab": "vocab_size",
    "embed": "hidden_size",
    "q_heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "mlp": "intermediate_size",
    "layers": "num_hidden_layers",
}


def _check_index(index: Index, size: int, axis: str) -> np.ndarray:
    idx = np.asarray(index)
    if idx.ndim != 1 or idx.size == 0:
        raise PruneError(f"keep along {axis}: the index must be a non-empty 1-D list")
    if idx.min() < 0 or idx.max() >= size:
        raise PruneError(f"keep along {axis}: indices must lie in [0, {size})")
    if len(np.unique(idx)) != idx.size:
        raise PruneError(f"keep along {axis}: indices repeat")
    return np.sort(idx)  # order is preserved: a kept channel keeps its relative position


def _take(tree: Any, path: tuple[str, ...], axis: str, idx: np.ndarray) -> Any:
    if isinstance(tree, dict):
        return {k: _take(v, (*path, k), axis, idx) for k, v in tree.items()}
    out = tree
    for dim, name in enumerate(logical_axes(path)):
        if name == axis:
            if out.shape[dim] <= idx.max():
                raise PruneError(f"keep along {axis}: {'/'.join(path)} has only {out.shape[dim]} entries")
            out = jnp.take(out, jnp.asarray(idx), axis=dim)
    return out


def keep(params: Params, axis: str, index: Index | Mapping[str, Index]) -> Params:
    """Params keeping only `index` along `axis` in every leaf that has it.

    `index` may be a mapping layer-key -> index for per-layer axes (`mlp`, heads), in which case
    each layer keeps its own indices (they must have the same length for a Llama config to express
    the result). For `layers`, `index` lists the layers to keep."""
    if axis == "layers":
        layers = params["layers"]
        idx = _check_index(index, len(layers), axis)  # type: ignore[arg-type]
        return {**params, "layers": {str(new): layers[str(int(old))] for new, old in enumerate(idx)}}
    if axis not in AXIS_FIELDS:
        raise PruneError(f"unknown axis {axis!r}; valid: {', '.join(AXIS_FIELDS)}")
    if isinstance(index, Mapping):
        lengths = {len(np.asarray(v)) for v in index.values()}
        if len(lengths) != 1:
            raise PruneError(f"keep along {axis}: every layer must keep the same count, got {sorted(lengths)}")
        if set(index) != set(params["layers"]):
            raise PruneError(f"keep along {axis}: the per-layer index must name every layer")
        new_layers = {}
        for i, layer in params["layers"].items():
            idx = _check_index(index[i], 1 << 62, axis)
            new_layers[i] = _take(layer, ("layers", i), axis, idx)
        return {**params, "layers": new_layers}
    idx = _check_index(index, 1 << 62, axis)
    return _take(params, (), axis, idx)


def shrink(
    cfg: LlamaConfig, params: Params, axis: str, index: Index | Mapping[str, Index]
) -> tuple[LlamaConfig, Params]:
    """`keep` plus the config that describes the result."""
    new_params = keep(params, axis, index)
    count = len(np.asarray(next(iter(index.values())) if isinstance(index, Mapping) else index))
    return cfg.replace(**{AXIS_FIELDS[axis]: count}), new_params


def kv_group_heads(kv_index: Index, group: int) -> np.ndarray:
    """q-head indices belonging to the kept kv heads (GQA: q head n uses kv head n // group)."""
    kv = np.sort(np.asarray(kv_index))
    return (kv[:, None] * group + np.arange(group)[None, :]).reshape(-1)


def shrink_heads(cfg: LlamaConfig, params: Params, kv_index: Index | Mapping[str, Index]) -> tuple[LlamaConfig, Params]:
    """Drop whole GQA groups: the kept kv heads and exactly their q heads, so the group size stays."""
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    if isinstance(kv_index, Mapping):
        q_index: Any = {i: kv_group_heads(v, group) for i, v in kv_index.items()}
    else:
        q_index = kv_group_heads(kv_index, group)
    # Both counts change together: a config with only one of them changed (9 q / 2 kv) is invalid.
    params = keep(keep(params, "kv_heads", kv_index), "q_heads", q_index)
    kv = len(np.asarray(next(iter(kv_index.values())) if isinstance(kv_index, Mapping) else kv_index))
    return cfg.replace(num_key_value_heads=kv, num_attention_heads=kv * group), params
