"""OWL: Outlier-Weighted Layerwise sparsity (Yin et al. 2023, arXiv 2310.05175) on top of Wanda.

Wanda prunes every layer at the same ratio t. OWL gives layer l a ratio s_l of its own, lower where
the layer holds more outliers, then prunes each layer with Wanda (`sparse.wanda_pass`) at s_l:
  1. outliers  D_l = the fraction of the layer's Wanda scores |W_ij|·‖X_j‖₂ (its seven projections
               together) above M x their mean (strictly above; M = 5 by default). The norms come from
               Wanda's own statistic (`sq_norm`) on the *dense* model: a calibration pass with nothing
               pruned, before Wanda's layer-sequential pass. That is a second pass over the calibration
               tokens, as in the authors' code and llm-compressor: the allocation needs every layer's D_l
               before layer 0 is pruned, while Wanda's statistics for layer l exist only after layers
               0..l-1 are pruned, so no single pass can give both.
  2. ratios    s_l = t - λ·(D_l - D̄)/max_k |D_k - D̄|, D̄ the mean of D weighted by each layer's
               projection weights (λ = 0.08 by default). More outliers, lower ratio; every s_l within
               ±λ of t, the layer farthest from D̄ exactly at t ± λ; the weighted mean of s is t. All
               D equal, or λ = 0: every layer at t, which is Wanda (the same masks where t·I is whole
               for every input width I; otherwise see 3).
  3. counts    exact to the weight: the model loses round(t·P) of its P projection weights, as a
               uniform `count_to_prune` would. Each matrix's ideal count s_l·O·I is rounded down and
               the weights left over go one each to the matrices with the largest remainders (ties:
               the earlier layer and projection). Within a matrix every row loses the same count and
               the first (count mod O) rows one more (`sparse.wanda_mask`). A layer's realized ratio
               is therefore s_l to within one weight per matrix. No clip: λ is refused unless
               [t - λ, t + λ] lies in [0, 1), so the map never leaves it and the mean stays exact.
The allocation is host-side numpy in float64 from gathered statistics: the same on every process.

Differences from the authors' code and llm-compressor (`owl_m`, `owl_lmbda` on its Wanda and
SparseGPT modifiers), which both map D linearly onto [0, 2λ] by (D - min)/(max - min)·2λ and
subtract that minus its plain mean from t (`owl_map="range"` selects that map here, centred on the
size-weighted mean so that the total stays exact: the same ratios for Llama's equal layers; every
layer then within t ± 2λ, which must lie in [0, 1)):
  * their slope is 2λ/(max - min); ours is λ/max|D - D̄|, never larger, and the same when D̄ is
    midway between min and max. Theirs lets a layer go up to 2λ from t (D = [1, 2, 3, 6] at λ =
    0.08: the 6 gets t - 0.096); ours keeps every layer in [t - λ, t + λ], the range the paper states for λ;
  * their mean is unweighted; ours weights by layer size (the same for Llama's equal layers);
  * llm-compressor's activation norm is the sum over batches of each batch's ‖X_j‖₂, not ‖X_j‖₂
    over all tokens (the same with one batch); the authors use the mean square, a constant factor
    that cancels against the mean in D;
  * no N:M: one --pattern fixes every layer at 1 - N/M, leaving nothing to allocate (a different
    N per layer would be a pattern per layer, which no other method here takes), so it is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from prunejax import calibrate
from prunejax.config import LlamaConfig
from prunejax.prune.masks import PROJECTIONS, PruneError, as_rows, count_to_prune
from prunejax.prune.request import Request, pruning_method
from prunejax.prune.result import PruneResult, sparse_result
from prunejax.prune.sparse import INPUT_OF, check_sparse_request, wanda_pass

Params = dict[str, Any]
DEFAULT_M = 5.0
DEFAULT_LAMBDA = 0.08
MAPS = ("bounded", "range")  # step 2's map (module doc), or the authors' and llm-compressor's
DEFAULT_MAP = "bounded"


def check_owl(
    ratio: float | None,
    pattern: tuple[int, int] | None,
    owl_m: float,
    owl_lambda: float,
    owl_map: str = DEFAULT_MAP,
) -> None:
    """Refuse an N:M pattern, M <= 0, an unknown map, and a λ that would take some layer's ratio out of
    [0, 1): t ± λ with the bounded map, t ± 2λ with the range map."""
    if pattern is not None:
        raise PruneError(
            f"--method owl does not take an N:M pattern: {pattern[0]}:{pattern[1]} fixes every layer's ratio at "
            f"{1 - pattern[0] / pattern[1]:g}, leaving nothing to allocate; use wanda --pattern, or owl --ratio"
        )
    if not owl_m > 0:
        raise PruneError(f"--owl-m must be positive (outliers are scores above M x the layer's mean), got {owl_m}")
    if owl_map not in MAPS:
        raise PruneError(f"--owl-map must be one of {', '.join(MAPS)}, got {owl_map!r}")
    reach = owl_lambda * (2 if owl_map == "range" else 1)  # the farthest a layer's ratio goes from t
    if ratio is not None and not (owl_lambda >= 0 and reach <= ratio and ratio + reach < 1):
        bound = "2λ" if owl_map == "range" else "λ"
        raise PruneError(
            f"--owl-lambda must be at least 0 and keep every layer's ratio t ± {bound} in [0, 1) "
            f"(--owl-map {owl_map}); at --ratio {ratio:g} it is {owl_lambda:g}"
        )


def matrix_shape(name: str, kernel_shape: tuple[int, ...]) -> tuple[int, int]:
    """(O, I) of a projection kernel viewed as W_OI (`masks.as_rows`), from its shape alone."""
    n_in = PROJECTIONS[name][1]
    return math.prod(kernel_shape[n_in:]), math.prod(kernel_shape[:n_in])


def outlier_ratio(lp: Params, sq_norm: dict[str, Any], owl_m: float) -> float:
    """D_l: the fraction of a layer's Wanda scores, its seven projections together, above M x their mean."""

    def scores() -> Any:  # one matrix at a time, twice: an 8B layer's scores would take ~0.9 GB at once
        for name, (block, _) in PROJECTIONS.items():
            w_OI = as_rows(name, np.asarray(lp[block][name], np.float32))
            yield np.abs(w_OI) * np.sqrt(np.asarray(sq_norm[INPUT_OF[name]], np.float32))[None, :]

    total, size = 0.0, 0
    for s_OI in scores():
        total, size = total + float(np.sum(s_OI, dtype=np.float64)), size + s_OI.size
    threshold = owl_m * total / size
    return sum(int(np.count_nonzero(s_OI > threshold)) for s_OI in scores()) / size


def layer_ratios(
    outliers: Sequence[float], sizes: Sequence[int], ratio: float, owl_lambda: float, owl_map: str = DEFAULT_MAP
) -> np.ndarray:
    """bounded: s_l = t - λ·(D_l - D̄)/max|D - D̄| with D̄ the size-weighted mean (module doc, step 2).
    range: s_l = t - (r_l - r̄), r_l = 2λ·(D_l - min D)/(max D - min D), r̄ its size-weighted mean."""
    d = np.asarray(outliers, np.float64)
    w = np.asarray(sizes, np.float64)
    if owl_map == "range":
        span = float(np.max(d) - np.min(d))
        if owl_lambda == 0 or span == 0:
            return np.full(d.shape, float(ratio))
        r = 2 * owl_lambda * (d - np.min(d)) / span
        return ratio - (r - np.sum(w * r) / np.sum(w))
    dev = d - np.sum(w * d) / np.sum(w)
    spread = float(np.max(np.abs(dev)))
    if owl_lambda == 0 or spread == 0:
        return np.full(d.shape, float(ratio))
    return ratio - owl_lambda * dev / spread


def matrix_counts(ratios: Sequence[float], sizes_LP: np.ndarray, ratio: float) -> np.ndarray:
    """Weights to prune per matrix [L, P]: round(t·P) in all, each matrix near s_l·size (module doc, step 3)."""
    sizes_LP = np.asarray(sizes_LP, np.int64)
    ideal = (np.asarray(ratios, np.float64)[:, None] * sizes_LP).reshape(-1)
    counts = np.floor(ideal).astype(np.int64)
    extra = count_to_prune(int(sizes_LP.sum()), ratio) - int(counts.sum())
    if not 0 <= extra <= counts.size:  # the ratios' weighted mean is t, so this cannot happen
        raise PruneError(f"OWL: layer ratios {list(ratios)} do not average to {ratio}")
    order = np.lexsort((np.arange(counts.size), -(ideal - counts)))  # largest remainder, then index
    counts[order[:extra]] += 1
    return np.minimum(counts, sizes_LP.reshape(-1)).reshape(sizes_LP.shape)


@pruning_method
def owl(
    cfg: LlamaConfig,
    params: Params,
    tokens_NL: np.ndarray | None,
    req: Request,
    owl_m: float = DEFAULT_M,
    owl_lambda: float = DEFAULT_LAMBDA,
    owl_map: str = DEFAULT_MAP,
) -> PruneResult:
    """OWL: Wanda with each layer's ratio set by its share of outlier scores (module doc)."""
    ratio, target, pattern, batch_size, mesh = req.ratio, req.target, req.pattern, req.batch_size, req.mesh
    check_owl(ratio, pattern, owl_m, owl_lambda, owl_map)
    ratio = check_sparse_request(ratio, target, None)
    _, dense = calibrate.sequential(cfg, params, tokens_NL, ("sq_norm",), batch_size=batch_size, mesh=mesh)
    keys = sorted(params["layers"], key=int)
    outliers = [outlier_ratio(params["layers"][k], dense[k]["sq_norm"], owl_m) for k in keys]
    shapes = [
        [matrix_shape(name, np.shape(params["layers"][k][block][name])) for name, (block, _) in PROJECTIONS.items()]
        for k in keys
    ]
    sizes_LP = np.array([[o * i for o, i in row] for row in shapes], np.int64)
    ratios = layer_ratios(outliers, sizes_LP.sum(axis=1), ratio, owl_lambda, owl_map)
    counts = matrix_counts(ratios, sizes_LP, ratio)
    count = {(k, name): int(counts[i, p]) for i, k in enumerate(keys) for p, name in enumerate(PROJECTIONS)}

    def count_of(key: str, name: str, shape_OI: tuple[int, int]) -> int:
        return count[key, name]

    new_params, masks = wanda_pass(cfg, params, tokens_NL, count_of, batch_size=batch_size, mesh=mesh)
    report = {
        "method": "owl",
        "comparison": "per output row",
        "owl_m": owl_m,
        "owl_lambda": owl_lambda,
        "owl_map": owl_map,
        "outlier_ratios": dict(zip(keys, outliers, strict=True)),
        "layer_ratios": {k: float(s) for k, s in zip(keys, ratios, strict=True)},
    }
    return sparse_result(cfg, new_params, masks, report)
