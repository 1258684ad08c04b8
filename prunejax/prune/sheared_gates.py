"""Hard-concrete (L0) gates for Sheared-LLaMA and their Lagrangian constraint toward a target shape.

Four gate groups, each a tensor of log-alphas (Louizos et al. 2018; Xia et al. 2023):
  layers [L]    one per decoder layer; scales both residual branches (a layer goes as a whole,
                so the result stays a standard Llama)
  heads  [L,K]  one per kv-head *group*: a kv-head goes only together with all G q-heads that read
                it, so every layer keeps K' kv-heads and N' = K'*G q-heads (GQA group size stays)
  hidden [D]    one per hidden channel, shared by all layers (embedding, residual stream, norms, head)
  ffn    [L,F]  one per FFN neuron of each layer; the constraint holds per layer so the fold can
                keep the same count in every layer

A sample (or the fold's deterministic values) is the `gates` of the model's own forward pass
(`prunejax.model`, which multiplies each group in where the table above says).

A gate sample is z = clip(sigmoid((logit(u) + log_alpha) / BETA) * (R - L) + L, 0, 1) with u uniform;
P(z != 0) = sigmoid(log_alpha - BETA * log(-L / R)). The Lagrangian compares the expected sparsity
of each group (per layer for heads and ffn) with a target sparsity that ramps linearly from 0 over
the warmup steps, `lambda1 * d + lambda2 * d**2` averaged, with the lambdas trained by ascent.

The fold is deterministic: the top-k log-alphas per group are kept (k = the target count exactly),
ties going to the lower index (stable sort). Kept layer/head/ffn gates take the hard-concrete
test-time value clip(sigmoid(log_alpha) * (R - L) + L, 0, 1), which is folded into `o_proj` and
`down_proj`; kept hidden channels take 1, because RMSNorm is not linear in a channel scale.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prunejax.config import LlamaConfig
from prunejax.prune.masks import PruneError
from prunejax.prune.shapes import check_loadable

Gates = dict[str, Any]  # group name -> array (log-alphas, samples, or deterministic values)

LIMIT_L, LIMIT_R, BETA, EPS = -0.1, 1.1, 2.0 / 3.0, 1e-6
LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(1e-2), math.log(1e2)
GROUPS = ("layers", "heads", "hidden", "ffn")
PER_LAYER = ("heads", "ffn")  # gate groups with one row per layer (the constraint holds per row)


def group_sizes(cfg: LlamaConfig) -> dict[str, int]:
    """Units per gate group (per layer for heads and ffn)."""
    return {
        "layers": cfg.num_hidden_layers,
        "heads": cfg.num_key_value_heads,
        "hidden": cfg.hidden_size,
        "ffn": cfg.intermediate_size,
    }


def gate_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    n = cfg.num_hidden_layers
    sizes = group_sizes(cfg)
    return {g: ((n, sizes[g]) if g in PER_LAYER else (sizes[g],)) for g in GROUPS}


def init_log_alpha(cfg: LlamaConfig, key: jax.Array, mean: float = 5.0, std: float = 0.01) -> Gates:
    """Log-alphas near `mean` (clipped into the allowed range): every gate starts almost surely open."""
    keys = jax.random.split(key, len(GROUPS))
    out = {}
    for k, (g, shape) in zip(keys, gate_shapes(cfg).items(), strict=True):
        out[g] = jnp.clip(mean + std * jax.random.normal(k, shape, jnp.float32), LOG_ALPHA_MIN, LOG_ALPHA_MAX)
    return out


def clip_log_alpha(log_alpha: Gates) -> Gates:
    return {g: jnp.clip(a, LOG_ALPHA_MIN, LOG_ALPHA_MAX) for g, a in log_alpha.items()}


def sample_gates(log_alpha: Gates, key: jax.Array) -> Gates:
    """One reparameterized hard-concrete sample per gate (differentiable in the log-alphas)."""
    keys = jax.random.split(key, len(GROUPS))
    out = {}
    for k, g in zip(keys, GROUPS, strict=True):
        u = jax.random.uniform(k, log_alpha[g].shape, jnp.float32, EPS, 1.0 - EPS)
        s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_alpha[g]) / BETA)
        out[g] = jnp.clip(s * (LIMIT_R - LIMIT_L) + LIMIT_L, 0.0, 1.0)
    return out


def keep_prob(log_alpha: jax.Array) -> jax.Array:
    """P(z != 0) for each gate."""
    return jax.nn.sigmoid(log_alpha - BETA * math.log(-LIMIT_L / LIMIT_R))


def expected_sizes(log_alpha: Gates) -> Gates:
    """Expected number of kept units: scalars for layers/hidden, one per layer for heads/ffn."""
    return {g: keep_prob(log_alpha[g]).sum(-1) for g in GROUPS}


def target_sizes(target: LlamaConfig) -> dict[str, int]:
    return group_sizes(target)


def lagrangian(
    log_alpha: Gates, lambdas: Gates, cfg: LlamaConfig, target: LlamaConfig, progress: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sum over groups of mean(l1*d + l2*d**2), d = expected sparsity - target sparsity * progress.
    `lambdas[g]` is [2]; `progress` in [0, 1] is the Lagrangian warmup fraction done."""
    full, tgt = group_sizes(cfg), target_sizes(target)
    expected = expected_sizes(log_alpha)
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    for g in GROUPS:
        d = (1.0 - expected[g] / full[g]) - progress * (1.0 - tgt[g] / full[g])
        total = total + jnp.mean(lambdas[g][0] * d + lambdas[g][1] * d * d)
        metrics[f"expected_{g}"] = jnp.mean(expected[g])
    return total, metrics


def init_lambdas() -> Gates:
    return {g: jnp.zeros((2,), jnp.float32) for g in GROUPS}


# ---- the deterministic fold ------------------------------------------------------------------
def top_k_index(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores along the last axis, ascending; ties keep the lower index."""
    order = np.argsort(-np.asarray(scores, np.float64), axis=-1, kind="stable")[..., :k]
    return np.sort(order, axis=-1)


def inference_value(log_alpha: np.ndarray) -> np.ndarray:
    """The hard-concrete test-time estimate clip(sigmoid(log_alpha) * (R - L) + L, 0, 1)."""
    s = 1.0 / (1.0 + np.exp(-np.asarray(log_alpha, np.float64)))
    return np.clip(s * (LIMIT_R - LIMIT_L) + LIMIT_L, 0.0, 1.0).astype(np.float32)


def deterministic_gates(log_alpha: Gates, target: LlamaConfig) -> tuple[Gates, Gates]:
    """(values, keep) of the folded model: `keep` holds exactly the target count of True per group
    (per layer for heads/ffn), chosen by top-k log-alpha; kept hidden channels have value 1, other
    kept gates their test-time value (which may be 0 for a unit the masks had closed), the rest 0."""
    tgt = target_sizes(target)
    values, keeps = {}, {}
    for g in GROUPS:
        la = np.asarray(jax.device_get(log_alpha[g]), np.float32)
        keep = np.zeros(la.shape, bool)
        np.put_along_axis(keep, top_k_index(la, tgt[g]), True, axis=-1)
        value = np.ones_like(la) if g == "hidden" else inference_value(la)
        values[g], keeps[g] = np.where(keep, value, 0.0).astype(np.float32), keep
    return values, keeps


def target_gaps(log_alpha: Gates, target: LlamaConfig) -> dict[str, float]:
    """Expected minus target size per group (mean over layers for heads/ffn)."""
    tgt = target_sizes(target)
    expected = expected_sizes(log_alpha)
    return {g: float(jnp.mean(expected[g])) - tgt[g] for g in GROUPS}


def check_reached(log_alpha: Gates, cfg: LlamaConfig, target: LlamaConfig, tolerance: float) -> dict[str, float]:
    """The gaps, or a PruneError naming them when any group misses its target by more than
    max(0.5 unit, tolerance * full size): the fold would then cut units the masks still use."""
    gaps = target_gaps(log_alpha, target)
    full = group_sizes(cfg)
    bad = {g: gap for g, gap in gaps.items() if abs(gap) > max(0.5, tolerance * full[g])}
    if bad:
        tgt = target_sizes(target)
        detail = ", ".join(
            f"{g}: expected {tgt[g] + gap:.2f} vs target {tgt[g]} (gap {gap:+.2f})" for g, gap in bad.items()
        )
        raise PruneError(
            f"the learned masks did not reach the target shape ({detail}); allowed gap is "
            f"max(0.5, {tolerance} x full size). Give more --prune-tokens or a larger lambda_lr"
        )
    return gaps


def validate_target(cfg: LlamaConfig, target: LlamaConfig) -> None:
    """A target the gates can express and transformers loads: no larger than the model, same GQA group
    size and head_dim, hidden size a multiple of the q-heads (`shapes.check_loadable`)."""
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        want, have = getattr(target, field), getattr(cfg, field)
        if want > have:
            raise PruneError(f"target {field}={want} is larger than the model's {have}")
        if want < 1:
            raise PruneError(f"target {field} must be at least 1, got {want}")
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    if target.num_attention_heads != target.num_key_value_heads * group or target.head_dim != cfg.head_dim:
        raise PruneError(
            f"sheared prunes whole GQA groups: target heads {target.num_attention_heads}/"
            f"{target.num_key_value_heads} must keep group size {group} and head_dim {cfg.head_dim}"
        )
    check_loadable(target)
