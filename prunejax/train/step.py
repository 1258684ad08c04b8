"""One pure train step `(state, batch) -> (state, metrics)` and the matching eval step.

State is a plain dict (checkpointed as it is):
  params     fp32 master weights (HF-named nested dict; with the layers stacked, one [n_layers, ...]
             array per weight kind, where the step scans them: `prunejax.train.state.scans_layers`)
  opt_state  optax AdamW state (moments shaped like params)
  masks      bool masks (True = kept) for sparse leaves; {} when dense
  step       int32 scalar: optimizer updates done
  rng        uint32 key data
  extra      only with an `Objective`: a trained pruning method's own leaves (Sheared's gates), which
             the optimizer updates together with params
A batch holds `inputs`/`targets` int32 [A, b, L]: A micro-batches accumulated into one update.
The caller jits the step once with shardings and donation (`prunejax.train.state.jit_train_step`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from prunejax import model
from prunejax.config import ConfigError, LlamaConfig
from prunejax.kernels import attention as attention_kernels
from prunejax.sharding import BATCH_AXES, batch_shards, ordered_sum
from prunejax.train.config import TrainConfig
from prunejax.train.optim import schedule
from prunejax.tree import apply_masks

State = dict[str, Any]
Batch = dict[str, jax.Array]
COMPUTE = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(tcfg: TrainConfig) -> Any:
    """The compute dtype; `auto` is bfloat16 on accelerators and float32 on CPU (no fast bf16 matmuls
    there), by the platform the step is traced for (`prunejax.kernels.attention.trace_platform`): call it
    while tracing."""
    if tcfg.compute_dtype == "auto":
        return jnp.float32 if attention_kernels.trace_platform() == "cpu" else jnp.bfloat16
    return COMPUTE[tcfg.compute_dtype]


def cross_entropy(logits_BLV: jax.Array, targets_BL: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy in float32."""
    return jnp.mean(model.nll_from_logits(logits_BLV.astype(jnp.float32), targets_BL))


def distill_kl(student_BLV: jax.Array, teacher_BLV: jax.Array, temperature: float) -> jax.Array:
    """KL(teacher || student) at `temperature`, times T² so gradients keep their scale (Hinton et al.)."""
    t = temperature
    logp_s = jax.nn.log_softmax(student_BLV.astype(jnp.float32) / t, axis=-1)
    logp_t = jax.nn.log_softmax(teacher_BLV.astype(jnp.float32) / t, axis=-1)
    kl_BL = jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), axis=-1)
    return t * t * jnp.mean(kl_BL)


def make_loss(
    cfg: LlamaConfig, tcfg: TrainConfig, teacher_cfg: LlamaConfig | None = None
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """loss(params, inputs, targets, teacher_params) -> (objective, cross-entropy)."""
    alpha = tcfg.distill_alpha if teacher_cfg is not None else 0.0

    def loss(params: Any, inputs_BL: jax.Array, targets_BL: jax.Array, teacher: Any) -> tuple[jax.Array, jax.Array]:
        dtype = compute_dtype(tcfg)
        if not alpha:  # LM head + log-softmax in chunks: [B, L, V] logits never exist at once
            nll_BL = model.token_nll(
                cfg, params, inputs_BL, targets_BL, dtype=dtype, remat=tcfg.remat, attention=tcfg.attention
            )
            ce = jnp.mean(nll_BL)
            return ce, ce
        logits_BLV = model.forward(cfg, params, inputs_BL, dtype=dtype, remat=tcfg.remat, attention=tcfg.attention)
        ce = cross_entropy(logits_BLV, targets_BL)
        teacher_BLV = model.forward(teacher_cfg, teacher, inputs_BL, dtype=dtype, attention=tcfg.attention)
        teacher_BLV = jax.lax.stop_gradient(teacher_BLV)
        return (1 - alpha) * ce + alpha * distill_kl(logits_BLV, teacher_BLV, tcfg.distill_temperature), ce

    return loss


def _unchanged(extra: Any) -> Any:
    return extra


@dataclasses.dataclass(frozen=True)
class Objective:
    """A trained pruning method's part of the one step (Sheared-LLaMA: hard-concrete gates and Lagrange
    multipliers). Its leaves live in state["extra"] and the step's optimizer updates {"params", "extra"}
    together (`optim.with_extra`: one optax.multi_transform). `loss(params, extra, inputs_BL, targets_BL,
    step) -> (objective, cross-entropy, metrics)` replaces the LM loss (metrics are scalars, averaged over
    micro-batches like the loss); `project(extra)` runs after every update."""

    loss: Callable[..., tuple[jax.Array, jax.Array, dict[str, jax.Array]]]
    project: Callable[[Any], Any] = _unchanged


def make_train_step(
    cfg: LlamaConfig,
    tcfg: TrainConfig,
    opt: optax.GradientTransformation,
    total_steps: int,
    teacher_cfg: LlamaConfig | None = None,
    mesh: Mesh | None = None,
    objective: Objective | None = None,
) -> Callable[..., tuple[State, dict[str, jax.Array]]]:
    """The pure step: accumulate grads over A micro-batches, mask them, AdamW, re-apply masks.
    With `grad_reduce: ordered` (and a `mesh`) the grads are summed over the batch devices in a fixed
    order (`prunejax.sharding.ordered_sum`) instead of by XLA's all-reduce. With an `objective` the
    trainable tree is {"params", "extra"} and the objective's loss and projection take part."""
    lr_fn = schedule(tcfg, total_steps)
    if objective is None:
        lm_loss = make_loss(cfg, tcfg, teacher_cfg)

        def loss_fn(trainable: Any, inputs_BL: jax.Array, targets_BL: jax.Array, teacher: Any, step: jax.Array) -> Any:
            loss, ce = lm_loss(trainable, inputs_BL, targets_BL, teacher)
            return loss, (ce, {})

    else:
        if teacher_cfg is not None:
            raise ConfigError("a pruning objective brings its own loss: it does not combine with distillation")

        def loss_fn(trainable: Any, inputs_BL: jax.Array, targets_BL: jax.Array, teacher: Any, step: jax.Array) -> Any:
            loss, ce, metrics = objective.loss(trainable["params"], trainable["extra"], inputs_BL, targets_BL, step)
            return loss, (ce, metrics)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulate(trainable: Any, batch: Batch, teacher: Any, step: jax.Array) -> tuple[Any, ...]:
        def micro(carry: Any, mb: Batch) -> tuple[Any, None]:
            grads, loss, ce, metrics = carry
            (mb_loss, (mb_ce, mb_metrics)), g = grad_fn(trainable, mb["inputs"], mb["targets"], teacher, step)
            metrics = jax.tree.map(jnp.add, metrics, mb_metrics)
            return (jax.tree.map(jnp.add, grads, g), loss + mb_loss, ce + mb_ce, metrics), None

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        metrics: dict[str, jax.Array] = {}
        if objective is not None:  # the objective's metrics, as zeros to sum into
            shapes = jax.eval_shape(loss_fn, trainable, batch["inputs"][0], batch["targets"][0], teacher, step)
            metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1][1])
        (grads, loss, ce, metrics), _ = jax.lax.scan(micro, (zeros, 0.0, 0.0, metrics), batch)
        return grads, loss, ce, metrics

    shards = batch_shards(mesh) if mesh is not None else 1
    grads_of = accumulate
    if tcfg.grad_reduce == "ordered" and shards > 1:

        def local(trainable: Any, batch: Batch, teacher: Any, step: jax.Array) -> tuple[Any, ...]:
            # this device's rows (equal counts everywhere: the mean of the means is the global mean)
            total = ordered_sum(accumulate(trainable, batch, teacher, step), BATCH_AXES, shards)
            return jax.tree.map(lambda x: x / shards, total)

        whole, rows = PartitionSpec(), PartitionSpec(None, BATCH_AXES)
        grads_of = jax.shard_map(
            local, mesh=mesh, in_specs=(whole, rows, whole, whole), out_specs=whole, check_vma=False
        )

    def train_step(state: State, batch: Batch, teacher: Any = None) -> tuple[State, dict[str, jax.Array]]:
        trainable, masks = state["params"], state["masks"]
        if objective is not None:
            trainable = {"params": trainable, "extra": state["extra"]}
            masks = {"params": masks} if masks else {}  # the masks name weights only
        grads, loss, ce, extra_metrics = grads_of(trainable, batch, teacher, state["step"])
        accum = batch["inputs"].shape[0]  # equal-size micro-batches: mean of means = global mean
        grads = apply_masks(jax.tree.map(lambda g: g / accum, grads), masks)
        updates, opt_state = opt.update(grads, state["opt_state"], trainable)
        new = apply_masks(optax.apply_updates(trainable, updates), masks)
        if objective is None:
            new_state = {**state, "params": new}
        else:
            new_state = {**state, "params": new["params"], "extra": objective.project(new["extra"])}
        new_state.update(opt_state=opt_state, step=state["step"] + 1)
        metrics = {
            "loss": loss / accum,
            "ce": ce / accum,
            "grad_norm": optax.tree.norm(grads),
            "lr": lr_fn(state["step"]),
            **{k: v / accum for k, v in extra_metrics.items()},
        }
        return new_state, metrics

    return train_step


def make_eval_step(cfg: LlamaConfig, tcfg: TrainConfig) -> Callable[[Any, Batch], jax.Array]:
    """eval(params, batch with inputs/targets [b, L]) -> mean cross-entropy per sequence [b]: each row's
    mean is computed where the row lives, and the host averages the rows in one order."""

    def eval_step(params: Any, batch: Batch) -> jax.Array:
        dtype = compute_dtype(tcfg)
        logits_BLV = model.forward(cfg, params, batch["inputs"], dtype=dtype, attention=tcfg.attention)
        return jnp.mean(model.nll_from_logits(logits_BLV.astype(jnp.float32), batch["targets"]), axis=1)

    return eval_step
