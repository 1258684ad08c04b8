"""The learning-rate schedule and AdamW of the paper's recipe, the joint optimizer of a trained pruning
method's extra leaves, and the mask helpers sparse training uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from prunejax import model
from prunejax.train.config import TrainConfig
from prunejax.tree import dict_keys

Params = dict[str, Any]


def warmup_steps(tcfg: TrainConfig, total_steps: int) -> int:
    return max(1, round(tcfg.warmup_frac * total_steps)) if tcfg.warmup_frac > 0 else 0


def schedule(tcfg: TrainConfig, total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """lr for update number `count` (0-based): linear warmup peak*(count+1)/W, then cosine to final_lr_frac*peak.

    The warmup starts at peak/W rather than 0 so that the first update is not wasted."""
    peak, final = tcfg.peak_lr, tcfg.peak_lr * tcfg.final_lr_frac
    warm = warmup_steps(tcfg, total_steps)
    decay = max(1, total_steps - warm)

    def lr(count: jax.Array) -> jax.Array:
        count = jnp.asarray(count, jnp.float32)
        warm_lr = peak * (count + 1) / max(warm, 1)
        frac = jnp.clip((count - warm + 1) / decay, 0.0, 1.0)
        cos_lr = final + 0.5 * (peak - final) * (1 + jnp.cos(jnp.pi * frac))
        return jnp.where(count < warm, warm_lr, cos_lr)

    return lr


def decay_mask(params: Params) -> Params:
    """Weight decay applies to matrices only (norm gains keep their scale), as in Llama/Lingua recipes; in
    stacked layers (`model.stack_layers`) a norm gain is [n_layers, D] and still no matrix."""

    def matrix(path: tuple[Any, ...], x: Any) -> bool:
        return x.ndim - model.stacked_path(dict_keys(path)) >= 2

    return jax.tree_util.tree_map_with_path(matrix, params)


def optimizer(tcfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm then AdamW with the schedule; the gradients it sees are already masked."""
    return optax.chain(
        optax.clip_by_global_norm(tcfg.clip_norm),
        optax.adamw(
            schedule(tcfg, total_steps),
            b1=tcfg.beta1,
            b2=tcfg.beta2,
            eps=tcfg.eps,
            weight_decay=tcfg.weight_decay,
            mask=decay_mask,
        ),
    )


def with_extra(
    weights: optax.GradientTransformation, extra: dict[str, optax.GradientTransformation]
) -> optax.GradientTransformation:
    """One optimizer over {"params": weights, "extra": {name: subtree}} (`step.Objective`'s trainable tree):
    `weights` (the run's `optimizer`) on params, `extra[name]` on each extra subtree, through
    optax.multi_transform, so clipping and the schedule see the weights' gradients only."""
    if "params" in extra:
        raise ValueError("an extra subtree may not be called 'params' (that label is the weights')")

    def labels(tree: Params) -> Params:
        named = {name: jax.tree.map(lambda _, n=name: n, sub) for name, sub in tree["extra"].items()}
        return {"params": jax.tree.map(lambda _: "params", tree["params"]), "extra": named}

    return optax.multi_transform({"params": weights, **extra}, labels)
