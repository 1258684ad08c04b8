"""Sparse (weight-level) pruning: magnitude, Wanda and SparseGPT, unstructured or N:M.

Each is score -> mask -> apply on the shared code in `masks`. Only the seven projections of every
decoder layer are pruned; embeddings, norms and the LM head are untouched and get no mask.
  magnitude  |W|, compared over each whole matrix (N:M: within each group of M inputs)
  wanda      |W_ij| * ‖X_j‖₂, compared within each output row i; layer-sequential
  sparsegpt  OBS with H = XᵀX, dampening 0.01·mean(diag H), columns in blocks of 128, the mask chosen
             per block (N:M: per group of M columns) from w²/[H⁻¹]_jj², the error of every pruned
             weight compensated into the not-yet-processed columns of its row; layer-sequential; on a
             mesh the solve is sharded over output rows
  owl        (in `owl`) Wanda at a ratio of its own per layer, set by the layer's share of outlier scores
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prunejax import calibrate
from prunejax.config import LlamaConfig
from prunejax.distributed import to_host
from prunejax.prune.masks import (
    PROJECTIONS,
    PruneError,
    as_rows,
    check_pattern_fits,
    check_ratio,
    count_to_prune,
    from_rows,
    magnitude_keep,
    mask_for,
    nm_mask,
    prune_lowest,
    prune_lowest_host,
)
from prunejax.prune.request import Request, pruning_method
from prunejax.prune.result import PruneResult, sparse_result

Params = dict[str, Any]
# Which calibration input (see `prunejax.calibrate`) each projection reads.
INPUT_OF = {
    "q_proj": "attn",
    "k_proj": "attn",
    "v_proj": "attn",
    "o_proj": "o",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "down",
}
BLOCK_SIZE = 128
DAMP = 0.01
log = logging.getLogger(__name__)
_unsplit_rows: set[tuple[int, int]] = set()


def check_sparse_request(ratio: float | None, target: Any, pattern: tuple[int, int] | None) -> float:
    """Sparse methods take a ratio (implied by an N:M pattern when omitted), never a target shape."""
    if target is not None:
        raise PruneError("sparse methods keep every shape; give --ratio (and --pattern), not --target")
    if ratio is None:
        if pattern is None:
            raise PruneError("give a pruning ratio (or an N:M pattern)")
        ratio = 1.0 - pattern[0] / pattern[1]
    check_ratio(ratio, pattern)
    return ratio


def _prune_layer_with(lp: Params, prune_matrix: Any) -> tuple[Params, Params]:
    """Apply `prune_matrix(name, W_OI) -> (W_OI, mask_OI)` to the layer's seven projections."""
    new_lp = jax.tree.map(lambda x: x, lp)
    masks: Params = {}
    for name, (block, _) in PROJECTIONS.items():
        w = lp[block][name]
        w_OI, mask_OI = prune_matrix(name, as_rows(name, w.astype(jnp.float32)))
        new_lp[block][name] = from_rows(name, w_OI, w.shape).astype(w.dtype)
        masks.setdefault(block, {})[name] = from_rows(name, mask_OI, w.shape)
    return new_lp, masks


@pruning_method
def magnitude(
    cfg: LlamaConfig,
    params: Params,
    tokens_NL: np.ndarray | None,
    req: Request,
) -> PruneResult:
    """Prune the smallest |W| (no calibration data needed, so no use for `tokens_NL`, `batch_size`, `mesh`)."""
    ratio, target, pattern = req.ratio, req.target, req.pattern
    ratio = check_sparse_request(ratio, target, pattern)
    check_pattern_fits(params, pattern)

    def prune_matrix(name: str, w_OI: jax.Array) -> tuple[jax.Array, jax.Array]:
        mask = mask_for(jnp.abs(w_OI), ratio, pattern, per_row=False)
        return jnp.where(mask, w_OI, 0.0), mask

    def prune_layer_host(lp: Params) -> tuple[Params, Params]:
        """The whole matrix's selection, on the host, in each kernel's own layout (`magnitude_keep`)."""
        new_lp, masks = jax.tree.map(lambda x: x, lp), {}
        for name, (block, n_in) in PROJECTIONS.items():
            w = np.asarray(lp[block][name])
            keep = magnitude_keep(w, n_in, count_to_prune(w.size, ratio))
            new_lp[block][name] = np.where(keep, w, np.zeros((), w.dtype))
            masks.setdefault(block, {})[name] = keep
        return new_lp, masks

    # N:M: one compile, layers share shapes
    prune_layer = prune_layer_host if pattern is None else jax.jit(lambda lp: _prune_layer_with(lp, prune_matrix))
    layers, masks = {}, {}
    for key, lp in params["layers"].items():
        layers[key], masks[key] = prune_layer(lp)
    return sparse_result(
        cfg, {**params, "layers": layers}, {"layers": masks}, {"method": "magnitude", "comparison": "per matrix"}
    )


def wanda_scores(w_OI: jax.Array, sq_norm_I: jax.Array) -> jax.Array:
    """|W_ij| · ‖X_j‖₂ from the summed squares of input column j."""
    return jnp.abs(w_OI) * jnp.sqrt(sq_norm_I)[None, :]


def wanda_mask(scores_OI: np.ndarray, n_prune: int) -> np.ndarray:
    """Keep-mask pruning `n_prune` of a matrix's scores, compared within each output row, on the host
    (`prune_lowest_host`): every row loses n_prune // O, and the first n_prune % O rows one more (Wanda's
    own counts are whole rows; OWL's per-layer counts need not be)."""
    o = scores_OI.shape[0]
    per_row, extra = divmod(n_prune, o)
    if extra == 0:
        return prune_lowest_host(scores_OI, per_row)
    more, fewer = prune_lowest_host(scores_OI[:extra], per_row + 1), prune_lowest_host(scores_OI[extra:], per_row)
    return np.concatenate([more, fewer])


CountOf = Callable[[str, str, tuple[int, int]], int]  # (layer key, projection, (O, I)) -> weights to prune


def wanda_pass(
    cfg: LlamaConfig,
    params: Params,
    tokens_NL: np.ndarray,
    count_of: CountOf | None,
    pattern: tuple[int, int] | None = None,
    *,
    batch_size: int = 8,
    mesh: Mesh | None = None,
) -> tuple[Params, Params]:
    """Wanda's layer-sequential pass: (new params, masks). Each matrix loses `count_of(key, name, (O, I))`
    weights (`wanda_mask`), or, with an N:M `pattern`, M - N of every M inputs of each row."""
    masks: Params = {}

    def prune_layer(key: str, lp: Params, stats: calibrate.Stats) -> Params:
        def prune_matrix(name: str, w_OI: jax.Array) -> tuple[jax.Array, jax.Array]:
            scores_OI = wanda_scores(w_OI, jnp.asarray(stats["sq_norm"][INPUT_OF[name]]))
            if pattern is None:
                mask = wanda_mask(np.asarray(scores_OI), count_of(key, name, scores_OI.shape))
                return np.where(mask, np.asarray(w_OI, np.float32), np.float32(0)), mask
            mask = nm_mask(scores_OI, *pattern)
            return jnp.where(mask, w_OI, 0.0), mask

        new_lp, masks[key] = _prune_layer_with(lp, prune_matrix)
        return new_lp

    new_params, _ = calibrate.sequential(
        cfg, params, tokens_NL, ("sq_norm",), prune_layer, batch_size=batch_size, mesh=mesh
    )
    return new_params, {"layers": masks}


@pruning_method
def wanda(
    cfg: LlamaConfig,
    params: Params,
    tokens_NL: np.ndarray | None,
    req: Request,
) -> PruneResult:
    """Wanda: layer-sequential, scores compared within each output row (every row loses the same count)."""
    ratio, target, pattern, batch_size, mesh = req.ratio, req.target, req.pattern, req.batch_size, req.mesh
    ratio = check_sparse_request(ratio, target, pattern)
    check_pattern_fits(params, pattern)

    def count_of(key: str, name: str, shape_OI: tuple[int, int]) -> int:
        return shape_OI[0] * count_to_prune(shape_OI[1], ratio)

    new_params, masks = wanda_pass(cfg, params, tokens_NL, count_of, pattern, batch_size=batch_size, mesh=mesh)
    return sparse_result(cfg, new_params, masks, {"method": "wanda", "comparison": "per output row"})


# ---- SparseGPT ---------------------------------------------------------------------------
@jax.jit
def inverse_hessian_factor(h_II: jax.Array, damp: float = DAMP) -> tuple[jax.Array, jax.Array]:
    """(upper Cholesky factor U of (H + λI)⁻¹ with λ = damp·mean(diag H), dead-input flags [I]).
    Inputs that never fire (H_jj = 0) get H_jj = 1 and their weights are zeroed by the caller."""
    h_II = jnp.asarray(h_II, jnp.float32)
    dead_I = jnp.diag(h_II) == 0
    h_II = h_II + jnp.diag(dead_I.astype(jnp.float32))
    h_II = h_II + damp * jnp.mean(jnp.diag(h_II)) * jnp.eye(h_II.shape[0], dtype=jnp.float32)
    chol = jnp.linalg.cholesky(h_II)
    hinv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(h_II.shape[0], dtype=jnp.float32))
    upper = jnp.linalg.cholesky(hinv).T
    return upper, dead_I


def host_factor(h_II: Any, damp: float = DAMP) -> tuple[jax.Array, jax.Array]:
    """`inverse_hessian_factor` on the host's CPU device. Not on an accelerator: XLA's TPU Cholesky and
    triangular solve need ~40 copies of H in temporaries, 34 GiB for an 8B down_proj (I = 14,336), more
    than a v4 chip has (`compile-check`); the host CPU runs the same float32 math. Where
    JAX has no CPU platform (JAX_PLATFORMS without cpu) the default device computes it."""
    try:
        cpu = jax.local_devices(backend="cpu")[0]  # this process's own: jax.devices() lists every host's
    except RuntimeError:
        return inverse_hessian_factor(jnp.asarray(h_II), damp)
    return inverse_hessian_factor(jax.device_put(np.asarray(h_II), cpu), damp)


@functools.partial(jax.jit, static_argnames=("pattern",))
def _sparsegpt_block(
    w_OC: jax.Array, u_CC: jax.Array, n_prune: jax.Array, pattern: tuple[int, int] | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One block of C columns: (pruned and compensated W, mask, per-column errors E = (w - q)/U_jj)."""
    o, c = w_OC.shape
    d_C = jnp.diag(u_CC)

    def column(j: jax.Array, w: jax.Array, err: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        w_j = w[:, j]
        q_j = jnp.where(mask[:, j], w_j, 0.0)
        e_j = (w_j - q_j) / d_C[j]
        # U is upper triangular: row j is zero left of j, so only columns >= j move.
        w = (w - e_j[:, None] * u_CC[j][None, :]).at[:, j].set(q_j)
        return w, err.at[:, j].set(e_j)

    err = jnp.zeros_like(w_OC)
    if pattern is None:
        mask = prune_lowest(((w_OC / d_C[None, :]) ** 2).reshape(1, -1), n_prune).reshape(o, c)
        w, err = jax.lax.fori_loop(0, c, lambda j, s: column(j, *s, mask), (w_OC, err))
        return w, mask, err
    n, m = pattern

    def group(g: jax.Array, state: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
        w, err, mask = state
        start = g * m
        w_Om = jax.lax.dynamic_slice_in_dim(w, start, m, axis=1)
        d_m = jax.lax.dynamic_slice_in_dim(d_C, start, m)
        mask = jax.lax.dynamic_update_slice_in_dim(mask, prune_lowest((w_Om / d_m[None, :]) ** 2, m - n), start, 1)
        for t in range(m):
            w, err = column(start + t, w, err, mask)
        return w, err, mask

    w, err, mask = jax.lax.fori_loop(0, c // m, group, (w_OC, err, jnp.ones((o, c), bool)))
    return w, mask, err


@functools.partial(jax.jit, static_argnames=("c0", "c1"), donate_argnums=(0,))
def apply_block(w_OI: jax.Array, w_OC: jax.Array, err_OC: jax.Array, u_II: jax.Array, *, c0: int, c1: int) -> jax.Array:
    """W with block [c0, c1) solved and the lazy batch update of the columns right of it applied (W's
    buffer is reused: the solve holds one W, sharded over rows on a mesh)."""
    w_OI = w_OI.at[:, c0:c1].set(w_OC)
    if c1 < w_OI.shape[1]:
        w_OI = w_OI.at[:, c1:].add(-err_OC @ u_II[c0:c1, c1:])
    return w_OI


def sparsegpt_matrix(
    w_OI: jax.Array,
    h_II: jax.Array,
    ratio: float,
    pattern: tuple[int, int] | None = None,
    block_size: int = BLOCK_SIZE,
    damp: float = DAMP,
    factor: tuple[jax.Array, jax.Array] | None = None,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """SparseGPT on one weight matrix W_OI with Hessian H = XᵀX: (new W, mask). Unstructured masks
    prune exactly round(ratio·O·I) weights (block counts by cumulative rounding).

    With a `mesh` the solve is sharded over output rows (`row_placement`): given H every row's
    compensation is its own, so each device updates its rows and only the unstructured mask's per-block
    choice looks across rows. The result is then gathered to the host, on every process."""
    o, i = w_OI.shape
    if pattern is not None and block_size % pattern[1]:
        raise PruneError(f"block size {block_size} must be a multiple of M={pattern[1]}")
    u_II, dead_I = factor if factor is not None else inverse_hessian_factor(h_II, damp)
    if not bool(jnp.all(jnp.isfinite(u_II))):
        raise PruneError("SparseGPT: the damped Hessian is not positive definite (calibration statistics broken?)")
    w = np.where(np.asarray(dead_I)[None, :], 0.0, np.asarray(w_OI, np.float32))
    if mesh is None:
        w = jnp.asarray(w)
    else:
        rows, everywhere = row_placement(mesh, o)
        w, u_II = jax.device_put(w, rows), jax.device_put(np.asarray(u_II), everywhere)
    masks = []
    for c0 in range(0, i, block_size):
        c1 = min(c0 + block_size, i)
        n_prune = count_to_prune(o * c1, ratio) - count_to_prune(o * c0, ratio)
        w_blk, m_blk, err = _sparsegpt_block(w[:, c0:c1], u_II[c0:c1, c0:c1], jnp.int32(n_prune), pattern)
        masks.append(m_blk)
        w = apply_block(w, w_blk, err, u_II, c0=c0, c1=c1)
    mask = jnp.concatenate(masks, axis=1)
    if mesh is not None:
        return jnp.asarray(to_host(w)), jnp.asarray(to_host(mask))
    return w, mask


def row_placement(mesh: Mesh, rows: int) -> tuple[NamedSharding, NamedSharding]:
    """(where W_OI's rows go, where U goes) for a sharded SparseGPT solve: the rows split over every
    axis of the mesh, U (and with it H⁻¹) whole on every device. Rows that do not divide the device count
    stay whole on every device (a warning, once per shape): the same result, computed redundantly."""
    everywhere = NamedSharding(mesh, PartitionSpec())
    if rows % mesh.size:
        if (rows, mesh.size) not in _unsplit_rows:
            _unsplit_rows.add((rows, mesh.size))
            log.warning("SparseGPT: %d rows do not divide %d devices: the solve is replicated", rows, mesh.size)
        return everywhere, everywhere
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names), None)), everywhere


@pruning_method
def sparsegpt(
    cfg: LlamaConfig,
    params: Params,
    tokens_NL: np.ndarray | None,
    req: Request,
    block_size: int = BLOCK_SIZE,
    damp: float = DAMP,
) -> PruneResult:
    """SparseGPT: layer-sequential OBS pruning with error compensation."""
    ratio, target, pattern, batch_size, mesh = req.ratio, req.target, req.pattern, req.batch_size, req.mesh
    ratio = check_sparse_request(ratio, target, pattern)
    check_pattern_fits(params, pattern)
    masks: Params = {}

    def prune_layer(key: str, lp: Params, stats: calibrate.Stats) -> Params:
        factors = {x: host_factor(h, damp) for x, h in stats["hessian"].items()}

        def prune_matrix(name: str, w_OI: jax.Array) -> tuple[jax.Array, jax.Array]:
            f = factors[INPUT_OF[name]]
            return sparsegpt_matrix(w_OI, None, ratio, pattern, block_size, damp, factor=f, mesh=mesh)

        new_lp, masks[key] = _prune_layer_with(lp, prune_matrix)
        return new_lp

    new_params, _ = calibrate.sequential(
        cfg, params, tokens_NL, ("hessian",), prune_layer, batch_size=batch_size, mesh=mesh
    )
    report = {"method": "sparsegpt", "block_size": block_size, "damp": damp}
    return sparse_result(cfg, new_params, {"layers": masks}, report)
