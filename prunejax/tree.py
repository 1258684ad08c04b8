"""Parameter pytrees addressed by path: ("layers", 3, "mlp", "up_proj") names one weight.

Params and masks are nested dicts (DESIGN.md); these are the few operations every stage shares:
reading and writing one leaf by path, walking the leaves, zeroing what a mask prunes, measuring a
mask's sparsity, and finding the first non-finite leaf.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prunejax import distributed

Params = dict[str, Any]
Path = tuple[Any, ...]


def get_path(tree: Params, path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: Params, path: Path, value: Any) -> None:
    """Set one leaf in place, creating the dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def leaf_paths(tree: Params, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path, leaf) of every leaf, depth first in dict order."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaf_paths(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def apply_masks(params: Params, masks: Params | None) -> Params:
    """`params` with every masked-out entry zeroed (masks: bool, True = kept). Leaves without a mask, and
    all of `params` when `masks` is empty or None, are passed through, not copied. Traceable under jit."""
    if not masks:
        return params
    out = jax.tree.map(lambda x: x, params)
    for path, m in leaf_paths(masks):
        w = get_path(params, path)
        set_path(out, path, jnp.where(m, w, jnp.zeros((), w.dtype)))
    return out


def sparsity(masks: Params, params: Params | None = None) -> dict[str, Any]:
    """How much `masks` prune: `mask_sparsity` (pruned / masked weights), the two counts, the pruned
    fraction `per_layer` (by layer key) and, given `params`, the `zero_fraction` of the masked weights.
    Host arrays are counted on the host, device arrays on their devices (one scalar comes back each)."""

    def count(x: Any) -> int:
        return int(np.sum(x)) if isinstance(x, np.ndarray) else int(distributed.to_host(jnp.sum(x)))

    pruned = total = zeros = 0
    layers: dict[Any, list[int]] = {}
    for path, m in leaf_paths(masks):
        m = m.astype(bool)
        p, n = count(~m), int(np.prod(m.shape))
        pruned, total = pruned + p, total + n
        if params is not None:
            zeros += count(get_path(params, path) == 0)
        if path[0] == "layers":
            seen = layers.setdefault(path[1], [0, 0])
            seen[0], seen[1] = seen[0] + p, seen[1] + n
    out = {
        "mask_sparsity": pruned / max(total, 1),
        "pruned_weights": pruned,
        "masked_weights": total,
        "per_layer": {i: p / max(n, 1) for i, (p, n) in layers.items()},
    }
    if params is not None:
        out["zero_fraction"] = zeros / max(total, 1)
    return out


def dict_keys(path: Path) -> tuple[str, ...]:
    """The dict keys of a `jax.tree_util` key path (its sequence indices and attributes left out)."""
    return tuple(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


@jax.jit
def _finite_flags(leaves: list[Any]) -> jax.Array:
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def _in_host_memory(x: Any) -> bool:
    """numpy data, or a jax.Array whose every shard is in this process's CPU memory (numpy reads it there)."""
    if isinstance(x, np.ndarray):
        return True
    return isinstance(x, jax.Array) and x.is_fully_addressable and all(d.platform == "cpu" for d in x.devices())


def nonfinite_leaf(tree: Any) -> str | None:
    """The path ("layers/0/mlp/up_proj", "opt_state/0/mu/...") of the first float leaf of `tree`
    holding a NaN or Inf, or None when every float leaf is finite. Leaves held in this process's CPU
    memory are checked by numpy there (a jitted check costs XLA:CPU ~0.5 s to compile, once per tree
    structure: more than the check); others by one jitted reduction and one transfer."""
    items = [
        (path, x)
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    if not items:
        return None
    leaves = [x for _, x in items]
    if all(_in_host_memory(x) for x in leaves):
        flags = np.array([bool(np.isfinite(np.asarray(x)).all()) for x in leaves])
    else:
        flags = np.asarray(distributed.to_host(_finite_flags(leaves)))
    bad = np.flatnonzero(~flags)
    if not bad.size:
        return None
    return "/".join(_key_name(e) for e in items[int(bad[0])][0])
