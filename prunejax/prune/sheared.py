"""Sheared-LLaMA: learn hard-concrete structured gates toward an exact target shape, then fold them.

The model weights, the gate log-alphas and the Lagrange multipliers train jointly on a token
budget read from a DATA_DIR: LM loss of the gated model plus the Lagrangian of `sheared_gates`,
AdamW on the weights, Adam on the log-alphas, Adam *ascent* on the lambdas (the original recipe:
lr 1e-4 for weights, 1.0 for masks and lambdas, Lagrangian warmup over 20% of the steps, ~0.42B
tokens = 3200 steps of 32 x 4096). Step t reads the contiguous windows of tokens
[offset + t*B*L, offset + (t+1)*B*L + 1) and samples its gates with `fold_in(seed, t)`, so a run
restored from an Orbax checkpoint in RUN_DIR continues bit for bit. At the end the gates must be
within `fold_tolerance` of the target (else a PruneError with the gap), and `sheared_model.fold`
turns them into a plain Llama of exactly the target shape.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from prunejax import model, sharding
from prunejax.config import ConfigError, LlamaConfig
from prunejax.data.store import DataError, TokenStore
from prunejax.prune import sheared_gates as sg
from prunejax.prune.masks import PruneError
from prunejax.prune.result import PruneResult, shape_of, structured_result
from prunejax.prune.shapes import Target, apply_target, resolve_target
from prunejax.prune.sheared_config import Plan, ShearedConfig, load_config, plan
from prunejax.prune.sheared_model import fold, masked_forward
from prunejax.train.state import batch_sharding, place_state, state_shardings

Params = dict[str, Any]
State = dict[str, Any]


def _optimizers(sc: ShearedConfig, p: Plan) -> dict[str, optax.GradientTransformation]:
    end = sc.lr * sc.lr_final_frac
    if p.lr_warmup > 0:
        lr = optax.warmup_cosine_decay_schedule(sc.lr / p.lr_warmup, sc.lr, p.lr_warmup, p.steps, end)
    else:
        lr = optax.cosine_decay_schedule(sc.lr, p.steps, sc.lr_final_frac)
    return {
        "params": optax.chain(
            optax.clip_by_global_norm(sc.clip_norm),
            optax.adamw(lr, b1=sc.beta1, b2=sc.beta2, eps=sc.eps, weight_decay=sc.weight_decay),
        ),
        "log_alpha": optax.adam(sc.mask_lr),
        "lambdas": optax.adam(sc.lambda_lr),
    }


def _keys(sc: ShearedConfig) -> jax.Array:
    """(gate init key, gate sampling key) from the seed."""
    return jax.random.split(jax.random.key(sc.seed))


def init_state(cfg: LlamaConfig, params: Params, sc: ShearedConfig, p: Plan) -> State:
    opts = _optimizers(sc, p)
    trainable = {
        "params": jax.tree.map(lambda x: jnp.array(x, jnp.float32), params),  # a copy: the step donates it
        "log_alpha": sg.init_log_alpha(cfg, _keys(sc)[0], sc.mask_init),
        "lambdas": sg.init_lambdas(),
    }
    opt = {k: opts[k].init(v) for k, v in trainable.items()}
    return {**trainable, "opt": opt, "step": jnp.zeros((), jnp.int32), "masks": None}


def make_step(
    cfg: LlamaConfig, target: LlamaConfig, sc: ShearedConfig, p: Plan
) -> Callable[[State, jax.Array], tuple[State, dict]]:
    """The pure update `(state, tokens [B, L+1]) -> (state, metrics)`."""
    opts = _optimizers(sc, p)
    dtype = jnp.bfloat16 if sc.compute_dtype == "bfloat16" else jnp.float32
    base = _keys(sc)[1]

    def loss_fn(trainable: State, step: jax.Array, tokens_BL1: jax.Array) -> tuple[jax.Array, dict]:
        gates = sg.sample_gates(trainable["log_alpha"], jax.random.fold_in(base, step))
        logits = masked_forward(cfg, trainable["params"], gates, tokens_BL1[:, :-1], dtype=dtype, remat=sc.remat)
        lm = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BL1[:, 1:]).mean()
        progress = jnp.minimum(1.0, step.astype(jnp.float32) / p.lagrangian_warmup)
        lag, metrics = sg.lagrangian(trainable["log_alpha"], trainable["lambdas"], cfg, target, progress)
        return lm + lag, {"lm_loss": lm, "lagrangian": lag, **metrics}

    def step_fn(state: State, tokens_BL1: jax.Array) -> tuple[State, dict]:
        trainable = {k: state[k] for k in ("params", "log_alpha", "lambdas")}
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, state["step"], tokens_BL1)
        grads["lambdas"] = jax.tree.map(jnp.negative, grads["lambdas"])  # ascent: maximize over lambdas
        new, opt = {}, {}
        for k, tx in opts.items():
            updates, opt[k] = tx.update(grads[k], state["opt"][k], trainable[k])
            new[k] = optax.apply_updates(trainable[k], updates)
        new["log_alpha"] = sg.clip_log_alpha(new["log_alpha"])
        metrics = {**metrics, "loss": loss, "lambda1": {g: new["lambdas"][g][0] for g in sg.GROUPS}}
        return {**new, "opt": opt, "step": state["step"] + 1, "masks": None}, metrics

    return step_fn


def batch(store: TokenStore, sc: ShearedConfig, step: int) -> np.ndarray:
    """Tokens [B, L+1] of step `step`: contiguous windows of L+1 tokens with stride L."""
    n = sc.tokens_per_step
    flat = store.read(sc.data_split, sc.data_offset + step * n, n + 1)
    rows = np.arange(sc.batch_size)[:, None] * sc.seq_len + np.arange(sc.seq_len + 1)[None, :]
    return flat[rows]


@functools.lru_cache(maxsize=4)
def _jitted_step(cfg: LlamaConfig, target: LlamaConfig, sc: ShearedConfig, p: Plan, mesh: Mesh) -> Callable[..., Any]:
    """jit once per setting with the train engine's shardings (weights and moments by the logical-axis
    table, gates and lambdas replicated, batch over data x fsdp) and the state donated."""
    shape = jax.eval_shape(lambda: init_state(cfg, model.init_params(cfg, jax.random.key(0)), sc, p))
    state_sh = state_shardings(mesh, shape)
    return jax.jit(
        make_step(cfg, target, sc, p),
        in_shardings=(state_sh, batch_sharding(mesh, accumulated=False)),
        out_shardings=(state_sh, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def make_stage_mesh(sc: ShearedConfig, mesh: Mesh | None = None) -> Mesh:
    """`mesh`, or else the (data, fsdp, tp) mesh of the settings; the batch must split evenly over data x fsdp."""
    if mesh is None:
        mesh = sharding.make_mesh(sc.mesh_data, sc.mesh_fsdp, sc.mesh_tp)
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    if sc.batch_size % rows or sc.batch_size % jax.process_count():
        raise ConfigError(
            f"sheared: batch_size {sc.batch_size} does not split over data x fsdp = {rows} devices "
            f"and {jax.process_count()} processes"
        )
    return mesh


# ---- run directory --------------------------------------------------------------------------
def _check_run_dir(run_dir: str, record: dict[str, Any]) -> None:
    """A run dir belongs to one (parent, target, data, config); resuming anything else is an error."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != json.loads(json.dumps(record, default=str)):
            raise PruneError(f"{run_dir} holds a sheared run with other settings; use a new --run-dir")
    else:
        with open(path, "w") as f:
            json.dump(record, f, indent=2, default=str)


def _scalars(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update({f"{k}_{g}": float(x) for g, x in v.items()})
        else:
            out[k] = float(v)
    return out


# ---- the stage --------------------------------------------------------------------------------
def train_gates(
    cfg: LlamaConfig,
    params: Params,
    target: LlamaConfig,
    sc: ShearedConfig,
    store: TokenStore,
    prune_tokens: int,
    *,
    run_dir: str | None = None,
    stop_after: int | None = None,
    mesh: Mesh | None = None,
    log: Callable[[str], None] = print,
) -> State:
    """Joint training of weights, gates and lambdas; resumes from `run_dir` if it holds a checkpoint.
    `stop_after` ends after that many total steps (the state is checkpointed), as a preemption would.
    `mesh` replaces the one the settings name (mesh_data, mesh_fsdp, mesh_tp)."""
    sg.validate_target(cfg, target)
    p = plan(sc, prune_tokens)
    end = sc.data_offset + p.tokens + 1
    if end > store.num_tokens(sc.data_split):
        raise DataError(
            f"{store.data_dir}: the pruning stage needs tokens [{sc.data_offset:,}, {end:,}) of split "
            f"{sc.data_split!r}, which has {store.num_tokens(sc.data_split):,}"
        )
    if store.vocab_size > cfg.vocab_size:
        raise DataError(f"{store.data_dir}: vocab {store.vocab_size} exceeds the model's {cfg.vocab_size}")
    mesh = make_stage_mesh(sc, mesh)
    state = place_state(mesh, init_state(cfg, params, sc, p))
    ckpt = writer = None
    if run_dir:
        from prunejax.train.checkpoint import Checkpointer, abstract  # Orbax only when checkpointing
        from prunejax.train.metrics import MetricsWriter

        record = {
            "parent": dataclasses.asdict(cfg),
            "target": dataclasses.asdict(target),
            "sheared": dataclasses.asdict(sc),
        }
        record.update(prune_tokens=prune_tokens, data=store.fingerprint)
        _check_run_dir(run_dir, record)
        ckpt, writer = Checkpointer(run_dir, keep=2), MetricsWriter(run_dir)
        restored = ckpt.restore_latest(abstract(state))
        if restored is not None:
            state = restored[1]
            writer.truncate_after(restored[0])
            log(f"sheared: resumed {run_dir} at step {restored[0]}")
    step_fn = _jitted_step(cfg, target, sc, p, mesh)
    batch_sh = batch_sharding(mesh, accumulated=False)
    rows = sc.batch_size // jax.process_count()
    local = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
    last = p.steps if stop_after is None else min(stop_after, p.steps)
    start = int(state["step"])
    pending: tuple[int, dict] | None = None
    t0 = time.time()

    def report(step: int, metrics: dict) -> None:
        row = {"step": step, **_scalars(metrics)}
        if not np.isfinite(row["loss"]):
            raise PruneError(f"sheared: loss is {row['loss']} at step {step}; lower lr or mask_lr")
        if writer:
            writer.write(row)
        if step % sc.log_every == 0 or step == p.steps:
            sizes = " ".join(f"{g}={row[f'expected_{g}']:.1f}" for g in sg.GROUPS)
            head = f"sheared step {step}/{p.steps} loss {row['lm_loss']:.4f} lag {row['lagrangian']:+.4f}"
            log(f"{head} {sizes} ({time.time() - t0:.0f}s)")

    for step in range(start, last):
        tokens_BL1 = jax.make_array_from_process_local_data(batch_sh, batch(store, sc, step)[local])
        state, metrics = step_fn(state, tokens_BL1)
        if pending is not None:  # read step t-1's metrics only once step t is dispatched
            report(*pending)
        pending = (step + 1, metrics)
        if ckpt and ((step + 1) % sc.ckpt_every == 0 or step + 1 == last):
            ckpt.save(step + 1, state, {"step": step + 1})
    if pending is not None:
        report(*pending)
    if ckpt:
        ckpt.close()
    return state


def shear(
    cfg: LlamaConfig,
    params: Params,
    target: LlamaConfig,
    sc: ShearedConfig,
    store: TokenStore,
    prune_tokens: int,
    *,
    run_dir: str | None = None,
    mesh: Mesh | None = None,
    log: Callable[[str], None] = print,
) -> tuple[LlamaConfig, Params, dict[str, Any]]:
    """The whole stage: train the gates, check they reached the target, fold. Returns the folded
    (cfg, params) and a report (tokens consumed, final expected sizes and gaps, kept indices)."""
    state = train_gates(cfg, params, target, sc, store, prune_tokens, run_dir=run_dir, mesh=mesh, log=log)
    gaps = sg.check_reached(state["log_alpha"], cfg, target, sc.fold_tolerance)
    gates, keep = sg.deterministic_gates(state["log_alpha"], target)
    new_cfg, new_params = fold(cfg, state["params"], gates, keep)
    if shape_of(new_cfg) != shape_of(target):  # the top-k fold guarantees this; a mismatch is a bug
        raise PruneError(f"fold produced {shape_of(new_cfg)}, target is {shape_of(target)}")
    p = plan(sc, prune_tokens)
    report = {
        "prune_tokens": p.tokens,
        "prune_steps": p.steps,
        "data": {
            "dir": os.path.abspath(store.data_dir),
            "fingerprint": store.fingerprint,
            "split": sc.data_split,
            "offset": sc.data_offset,
            "count": p.tokens + 1,
        },
        "gaps": gaps,
        "kept_layers": np.flatnonzero(keep["layers"]).tolist(),
        "options": dataclasses.asdict(sc),
    }
    return new_cfg, new_params, report


def resolve_goal(cfg: LlamaConfig, ratio: float | None, target: Target | None) -> tuple[LlamaConfig, str]:
    """The target config: explicit (`layers=, hidden=, ffn=, heads=`), the paper's preset, or for a
    bare ratio the shared width rule (hidden and FFN shrink together, layers and heads kept, like
    the paper's Sheared target on Llama-3.1-8B)."""
    tgt, how = resolve_target(cfg, "sheared", "mixed", ratio, target)
    goal = apply_target(cfg, tgt)
    sg.validate_target(cfg, goal)
    return goal, how


def sheared(
    cfg: LlamaConfig,
    params: Params,
    tokens_NL: np.ndarray | None = None,
    *,
    ratio: float | None = None,
    target: Target | None = None,
    pattern: Any = None,
    batch_size: int = 8,
    mesh: Mesh | None = None,
    data: str | TokenStore | None = None,
    prune_tokens: int | None = None,
    config: ShearedConfig | str | None = None,
    run_dir: str | None = None,
    seed: int | None = None,
    log: Callable[[str], None] = print,
) -> PruneResult:
    """Registry entry: learn gates on `prune_tokens` tokens of DATA_DIR `data` and fold them, on `mesh`
    if given (else the config's mesh). Calibration tokens and batch_size are unused (the stage
    trains on the data range instead)."""
    del tokens_NL, batch_size
    if pattern is not None:
        raise PruneError("sheared removes structures; an N:M pattern applies to sparse methods only")
    if data is None or prune_tokens is None:
        raise PruneError("sheared trains its masks: give a DATA_DIR (--data) and a token budget (--prune-tokens)")
    sc = config if isinstance(config, ShearedConfig) else load_config(config)
    if seed is not None:
        sc = dataclasses.replace(sc, seed=seed)
    store = data if isinstance(data, TokenStore) else TokenStore(data)
    goal, how = resolve_goal(cfg, ratio, target)
    dtype = jax.tree.leaves(params)[0].dtype
    new_cfg, new_params, report = shear(cfg, params, goal, sc, store, prune_tokens, run_dir=run_dir, mesh=mesh, log=log)
    new_params = jax.tree.map(lambda x: x.astype(dtype), new_params)
    return structured_result(cfg, new_cfg, new_params, {"method": "sheared", "target_from": how, **report})
