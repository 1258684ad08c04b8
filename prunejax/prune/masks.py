"""Shared mask code for sparse pruning: lowest-k per group, N:M along the input axis, exact counts.

Every sparse method is "score -> mask -> apply" on top of these functions. Conventions:
  * a mask is boolean, True = kept, shaped like the weight it masks;
  * projection kernels are viewed as matrices W_OI (output rows, input columns): Flax kernels are
    (in..., out...), so `as_rows` flattens the input axes and transposes; `from_rows` undoes it;
  * tie-breaking: among equal scores the one at the lower flat index is pruned first (a stable
    ascending sort), so masks are deterministic and the pruned count is exact even for constant
    scores;
  * N:M keeps the N highest-scoring of every M consecutive *input* weights of each output row.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prunejax.tree import get_path, leaf_paths, set_path

Params = dict[str, Any]

# Decoder-layer projections and how many leading axes of their kernel are input (reduction) axes.
PROJECTIONS: dict[str, tuple[str, int]] = {
    "q_proj": ("self_attn", 1),
    "k_proj": ("self_attn", 1),
    "v_proj": ("self_attn", 1),
    "o_proj": ("self_attn", 2),
    "gate_proj": ("mlp", 1),
    "up_proj": ("mlp", 1),
    "down_proj": ("mlp", 1),
}


class PruneError(ValueError):
    """A pruning request that cannot be honoured (bad ratio, pattern, target or statistics)."""


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4); None stays None (unstructured)."""
    if pattern is None:
        return None
    try:
        n_str, m_str = pattern.split(":")
        n, m = int(n_str), int(m_str)
    except ValueError:
        raise PruneError(f"pattern {pattern!r} is not of the form N:M (e.g. 2:4)") from None
    if not 0 < n < m:
        raise PruneError(f"pattern {pattern!r} needs 0 < N < M")
    return n, m


def check_ratio(ratio: float, pattern: tuple[int, int] | None = None) -> float:
    """A sparse ratio in (0, 1) that agrees with the N:M pattern (2:4 means exactly 0.5)."""
    if not 0.0 < ratio < 1.0:
        raise PruneError(f"pruning ratio must be in (0, 1), got {ratio}")
    if pattern is not None:
        n, m = pattern
        implied = 1.0 - n / m
        if not math.isclose(ratio, implied, abs_tol=1e-9):
            raise PruneError(f"pattern {n}:{m} prunes {implied:g} of the weights, but the ratio asked is {ratio:g}")
    return ratio


def as_rows(name: str, w: jax.Array) -> jax.Array:
    """Kernel (in..., out...) -> W_OI: output rows, flattened input columns."""
    n_in = PROJECTIONS[name][1]
    i = math.prod(w.shape[:n_in])
    return w.reshape(i, -1).T


def from_rows(name: str, w_OI: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of `as_rows` for a kernel of `shape`."""
    n_in = PROJECTIONS[name][1]
    return w_OI.T.reshape(shape[:n_in] + shape[n_in:])


def prune_lowest(scores_GS: jax.Array, n_prune: int | jax.Array) -> jax.Array:
    """Mask [G,S] pruning exactly `n_prune` lowest scores in every group (row); ties: lower index first.
    `n_prune` may be a traced integer (SparseGPT picks a count per block inside jit)."""
    g, s = scores_GS.shape
    if isinstance(n_prune, int) and not 0 <= n_prune <= s:
        raise PruneError(f"cannot prune {n_prune} of {s} weights per group")
    return _prune_lowest(scores_GS, jnp.asarray(n_prune, jnp.int32))


def _order_keys(scores: jax.Array) -> jax.Array:
    """uint32 keys in the scores' order (float bits, sign-flipped); -0.0 and 0.0 get the same key."""
    x = jnp.where(scores == 0, 0.0, scores.astype(jnp.float32))
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


@jax.jit
def _prune_lowest(scores_GS: jax.Array, n_prune: jax.Array) -> jax.Array:
    """Each row's n-th lowest key by radix selection (32 counting passes, most significant bit first;
    a sort is ~20x slower on CPU), then: prune every key below it and the first ties in index order."""
    keys_GS = _order_keys(scores_GS)

    def next_bit(i: jax.Array, t_G1: jax.Array) -> jax.Array:  # t: the largest key with < n keys below it
        cand_G1 = t_G1 | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        below_G1 = jnp.sum(keys_GS < cand_G1, axis=-1, keepdims=True, dtype=jnp.int32)
        return jnp.where(below_G1 < n_prune, cand_G1, t_G1)

    t_G1 = jax.lax.fori_loop(0, 32, next_bit, jnp.zeros((scores_GS.shape[0], 1), jnp.uint32))
    below_GS, tie_GS = keys_GS < t_G1, keys_GS == t_G1
    ties_to_prune_G1 = n_prune - jnp.sum(below_GS, axis=-1, keepdims=True, dtype=jnp.int32)
    tie_rank_GS = jnp.cumsum(tie_GS, axis=-1, dtype=jnp.int32)  # 1-based among the ties, in index order
    return ~(below_GS | (tie_GS & (tie_rank_GS <= ties_to_prune_G1)))


def prune_lowest_host(scores_GS: np.ndarray, n_prune: int) -> np.ndarray:
    """`prune_lowest` on the host, the same mask for finite scores: each row's n-th lowest score by
    numpy's introselect (one pass) instead of 32 radix passes. Float comparison orders finite scores as
    `_order_keys` does (-0.0 ties 0.0), so no keys are needed; ties are ranked in index order only in
    the rows where some, not all, of the scores equal to the n-th are pruned. About twice as fast on
    CPU for whole matrices and long rows (magnitude, Wanda); N:M's groups of 4 stay on `prune_lowest`."""
    scores_GS = np.asarray(scores_GS, np.float32)
    g, s = scores_GS.shape
    if not 0 <= n_prune <= s:
        raise PruneError(f"cannot prune {n_prune} of {s} weights per group")
    if n_prune == 0:
        return np.ones((g, s), bool)
    kth_G1 = np.partition(scores_GS, n_prune - 1, axis=-1)[:, n_prune - 1 : n_prune]
    below_GS = scores_GS < kth_G1
    tie_GS = scores_GS == kth_G1
    left_G = n_prune - below_GS.sum(axis=-1)
    keep_GS = ~(below_GS | tie_GS)  # every tie pruned: right where exactly `left` scores tie
    rows = np.flatnonzero(tie_GS.sum(axis=-1) > left_G)
    if rows.size > 64:  # many rows: rank their ties at once
        rank_RS = np.cumsum(tie_GS[rows], axis=-1)
        keep_GS[rows] |= tie_GS[rows] & (rank_RS > left_G[rows, None])
    else:  # a few (a whole matrix is one row): keep the ties past the first `left`
        for r in rows:
            keep_GS[r, np.flatnonzero(tie_GS[r])[left_G[r] :]] = True
    return keep_GS


def magnitude_keep(w: np.ndarray, n_in: int, n_prune: int) -> np.ndarray:
    """Keep-mask of a kernel `w` (in..., out...) with its `n_prune` smallest |w| pruned: the mask that
    `prune_lowest_host` gives for |as_rows(w)| taken as one row (ties pruned in W_OI's index order),
    computed in the kernel's own layout. No transposed copy is made, and the counts come from the
    partitioned copy, so it reads the matrix ~5 times instead of ~12 (SmolLM2: benchmarks/README.md)."""
    a_flat = np.abs(np.asarray(w, np.float32)).reshape(-1)
    if not 0 <= n_prune <= a_flat.size:
        raise PruneError(f"cannot prune {n_prune} of {a_flat.size} weights per group")
    if n_prune == 0:
        return np.ones(np.shape(w), bool)
    part = np.partition(a_flat, n_prune - 1)
    kth = part[n_prune - 1]  # part[:n_prune] holds the n_prune smallest, every score below kth among them
    ties_pruned = n_prune - int(np.count_nonzero(part[:n_prune] < kth))
    keep = a_flat > kth
    if np.count_nonzero(part[n_prune:] == kth):  # ties on both sides: keep those last in W_OI's order
        n_i = math.prod(np.shape(w)[:n_in])
        n_o = a_flat.size // n_i
        tied = np.flatnonzero(a_flat == kth)  # kernel index i * O + o is W_OI index o * I + i
        order = np.argsort((tied % n_o) * n_i + tied // n_o)
        keep[tied[order[ties_pruned:]]] = True
    return keep.reshape(np.shape(w))


def count_to_prune(size: int, ratio: float) -> int:
    """The exact number of weights a ratio removes from `size` (round half to even, as Python does)."""
    return int(round(size * ratio))


def row_mask(scores_OI: jax.Array, ratio: float) -> jax.Array:
    """Unstructured, compared within each output row (Wanda): every row loses the same count."""
    return prune_lowest(scores_OI, count_to_prune(scores_OI.shape[1], ratio))


def matrix_mask(scores_OI: jax.Array, ratio: float) -> jax.Array:
    """Unstructured, compared over the whole matrix (magnitude pruning, SparseGPT blocks)."""
    flat = scores_OI.reshape(1, -1)
    return prune_lowest(flat, count_to_prune(flat.shape[1], ratio)).reshape(scores_OI.shape)


def nm_mask(scores_OI: jax.Array, n: int, m: int) -> jax.Array:
    """Keep the N best of every M consecutive input weights of each output row."""
    o, i = scores_OI.shape
    if i % m:
        raise PruneError(f"N:M pattern {n}:{m} does not divide the input dimension {i}")
    groups = scores_OI.reshape(o * i // m, m)
    return prune_lowest(groups, m - n).reshape(o, i)


def mask_for(scores_OI: jax.Array, ratio: float, pattern: tuple[int, int] | None, per_row: bool) -> jax.Array:
    """N:M when a pattern is given, else unstructured per row or per matrix."""
    if pattern is not None:
        return nm_mask(scores_OI, *pattern)
    return row_mask(scores_OI, ratio) if per_row else matrix_mask(scores_OI, ratio)


def check_pattern_fits(params: Params, pattern: tuple[int, int] | None) -> None:
    """Every projection's input dimension must be a multiple of M; says which one is not."""
    if pattern is None:
        return
    for path, w in projection_leaves(params):
        i = math.prod(w.shape[: PROJECTIONS[path[-1]][1]])
        if i % pattern[1]:
            raise PruneError(
                f"N:M pattern {pattern[0]}:{pattern[1]} does not divide the input dimension {i} of {'/'.join(path)}"
            )


def projection_leaves(params: Params) -> list[tuple[tuple[str, ...], jax.Array]]:
    """(path, kernel) of the seven projections of every decoder layer, in layer order."""
    out = []
    for i in sorted(params["layers"], key=int):
        for name, (block, _) in PROJECTIONS.items():
            out.append((("layers", i, block, name), params["layers"][i][block][name]))
    return out


def compose(first: Params, second: Params) -> Params:
    """Masks of pruning a sparse model again: a weight is kept only if both keep it (first AND second);
    a leaf that only one of them masks keeps that mask."""
    out = jax.tree.map(lambda x: x, second)
    for path, m in leaf_paths(first):
        try:
            m = jnp.logical_and(m, get_path(second, path))
        except KeyError:
            pass
        set_path(out, path, jnp.asarray(m, bool))
    return out
