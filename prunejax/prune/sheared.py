"""Sheared-LLaMA: learn hard-concrete structured gates toward an exact target shape, then fold them.

The gate log-alphas and the Lagrange multipliers train jointly with the weights on the engine of
`prunejax train`: its one pure step with an `Objective` (LM loss of the gated model plus the Lagrangian of
`sheared_gates`, the log-alphas clipped after each update) and one optimizer over both
(`optim.with_extra`: the run's AdamW with warmup then cosine on the weights, Adam on the log-alphas, Adam
*ascent* on the lambdas; the original recipe: lr 1e-4 for weights, 1.0 for masks and lambdas, Lagrangian
warmup over 20% of the steps, ~0.42B tokens = 3200 steps of 32 x 4096), its loop, checkpoints, metrics
and grain pipeline. The stage reads the windows of the token range [offset, offset + steps*B*L + 1) once
each, shuffled by seed, and samples step t's gates with `fold_in(seed, t)`. With a `run_dir` the stage is
a RUN_DIR like train's (run.json, metrics.jsonl, Orbax checkpoints with the iterator position): it
resumes bit for bit, and SIGTERM/SIGINT save a checkpoint and stop it. At the end the gates must be
within `fold_tolerance` of the target (else a PruneError with the gap), and `sheared_model.fold` turns
them into a plain Llama of exactly the target shape.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from prunejax import locks, model, sharding, storage
from prunejax.config import ConfigError, LlamaConfig
from prunejax.data.store import DataError, TokenStore
from prunejax.prune import sheared_gates as sg
from prunejax.prune.masks import PruneError
from prunejax.prune.result import PruneResult, shape_of, structured_result
from prunejax.prune.shapes import Target, apply_target, resolve_target
from prunejax.prune.sheared_config import Plan, ShearedConfig, load_config, plan
from prunejax.prune.sheared_model import fold
from prunejax.train import optim
from prunejax.train import state as state_lib
from prunejax.train.config import TrainConfig
from prunejax.train.loop import LoopConfig, Stopped
from prunejax.train.step import COMPUTE, Objective, make_train_step

Params = dict[str, Any]
State = dict[str, Any]


def train_config(sc: ShearedConfig, p: Plan) -> TrainConfig:
    """The weights' side of the stage in the train engine's terms: batch, schedule, AdamW, data range
    (exactly the windows the budget uses), a metrics record every step, checkpoint cadence, mesh."""
    return TrainConfig(
        seq_len=sc.seq_len,
        global_batch=sc.batch_size,
        peak_lr=sc.lr,
        warmup_frac=sc.lr_warmup_frac,
        final_lr_frac=sc.lr_final_frac,
        beta1=sc.beta1,
        beta2=sc.beta2,
        eps=sc.eps,
        weight_decay=sc.weight_decay,
        clip_norm=sc.clip_norm,
        compute_dtype=sc.compute_dtype,
        remat=sc.remat,
        seed=sc.seed,
        data_split=sc.data_split,
        data_offset=sc.data_offset,
        data_count=p.tokens + 1,
        val_batches=0,
        log_every=1,
        ckpt_every=sc.ckpt_every,
        keep_checkpoints=2,
        mesh_data=sc.mesh_data,
        mesh_fsdp=sc.mesh_fsdp,
        mesh_tp=sc.mesh_tp,
        grad_reduce=sc.grad_reduce,
    )


def optimizer(sc: ShearedConfig, p: Plan) -> optax.GradientTransformation:
    """The train engine's AdamW on the weights, Adam on the log-alphas, Adam ascent on the lambdas."""
    return optim.with_extra(
        optim.optimizer(train_config(sc, p), p.steps),
        {
            "log_alpha": optax.adam(sc.mask_lr),
            "lambdas": optax.chain(optax.scale(-1.0), optax.adam(sc.lambda_lr)),  # ascent: maximize over lambdas
        },
    )


def _keys(sc: ShearedConfig) -> jax.Array:
    """(gate init key, gate sampling key) from the seed."""
    return jax.random.split(jax.random.key(sc.seed))


def objective(cfg: LlamaConfig, target: LlamaConfig, sc: ShearedConfig, p: Plan) -> Objective:
    """The gated model's LM loss (the model's own `token_nll` with the sampled gates: its chunked head, no
    [B, L, V] logits at once) plus the Lagrangian toward `target`; gates sampled per step."""
    dtype = COMPUTE[sc.compute_dtype]
    base = _keys(sc)[1]

    def loss(
        params: Params, extra: State, inputs_BL: jax.Array, targets_BL: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        gates = sg.sample_gates(extra["log_alpha"], jax.random.fold_in(base, step))
        ce = jnp.mean(model.token_nll(cfg, params, inputs_BL, targets_BL, dtype=dtype, remat=sc.remat, gates=gates))
        progress = jnp.minimum(1.0, step.astype(jnp.float32) / p.lagrangian_warmup)
        lag, metrics = sg.lagrangian(extra["log_alpha"], extra["lambdas"], cfg, target, progress)
        lambda1 = {f"lambda1_{g}": extra["lambdas"][g][0] for g in sg.GROUPS}
        return ce + lag, ce, {"lagrangian": lag, **metrics, **lambda1}

    def project(extra: State) -> State:
        return {**extra, "log_alpha": sg.clip_log_alpha(extra["log_alpha"])}

    return Objective(loss=loss, project=project)


def init_state(cfg: LlamaConfig, params: Params, sc: ShearedConfig, p: Plan) -> State:
    """The train engine's step-0 state with the gates and lambdas as its extra leaves."""
    extra = {"log_alpha": sg.init_log_alpha(cfg, _keys(sc)[0], sc.mask_init), "lambdas": sg.init_lambdas()}
    weights = jax.tree.map(lambda x: jnp.array(x, jnp.float32), params)  # a copy: the step donates it
    return state_lib.init_state(weights, None, optimizer(sc, p), sc.seed, extra=extra)


@functools.lru_cache(maxsize=4)
def _jitted_step(cfg: LlamaConfig, target: LlamaConfig, sc: ShearedConfig, p: Plan, mesh: Mesh) -> Callable[..., Any]:
    """The train engine's step with Sheared's objective, jitted once per setting with its shardings (weights
    and moments by the logical-axis table, gates and lambdas replicated, batch over data x fsdp), the state
    donated."""
    shape = jax.eval_shape(lambda: init_state(cfg, model.init_params(cfg, jax.random.key(0)), sc, p))
    step = make_train_step(
        cfg, train_config(sc, p), optimizer(sc, p), p.steps, mesh=mesh, objective=objective(cfg, target, sc, p)
    )
    return state_lib.jit_train_step(step, mesh, shape)


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


# ---- the stage --------------------------------------------------------------------------------
@locks.writes("run_dir")  # its RUN_DIR (when given) has one writer, as train's
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
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
) -> State:
    """Joint training of weights, gates and lambdas on the train engine; returns its state (gates and
    lambdas in state["extra"]). With `run_dir` (a RUN_DIR) it resumes from the newest checkpoint there, and
    SIGTERM/SIGINT save a checkpoint and raise `Stopped`. `stop_after` ends after that many total steps
    (checkpointed when there is a run_dir), as a preemption would. `mesh` replaces the one the settings name
    (mesh_data, mesh_fsdp, mesh_tp)."""
    from prunejax.data.pipeline import BatchSpec, WindowSource, train_dataset  # grain and Orbax: only to train
    from prunejax.train import run as engine
    from prunejax.train.checkpoint import Checkpointer
    from prunejax.train.metrics import MetricsWriter

    sg.validate_target(cfg, target)
    p = plan(sc, prune_tokens)
    end = sc.data_offset + p.tokens + 1
    if end > store.num_tokens(sc.data_split):
        raise DataError(
            f"{store.data_dir}: the pruning stage needs tokens [{sc.data_offset:,}, {end:,}) of split "
            f"{sc.data_split!r}, which has {store.num_tokens(sc.data_split):,}"
        )
    tcfg = train_config(sc, p)
    engine.check_inputs(cfg, tcfg, store, p.tokens)
    mesh = make_stage_mesh(sc, mesh)
    source = WindowSource(store, sc.data_split, sc.data_offset, p.tokens + 1, sc.seq_len)
    state = state_lib.place_state(mesh, init_state(cfg, params, sc, p))
    checkpointer, resuming, start, data_state = None, False, 0, None
    if run_dir:
        record = {
            "train": tcfg.to_dict(),
            "sheared": dataclasses.asdict(sc),
            "model": {"parent": cfg.to_hf_dict(), "target": target.to_hf_dict()},
            "data": {"dir": storage.absolute(store.data_dir), "fingerprint": store.fingerprint, "windows": len(source)},
            "tokens": prune_tokens,
            "steps": p.steps,
        }
        try:
            resuming = engine.open_run_dir(run_dir, record)
        except ConfigError as e:
            raise PruneError(f"{e}: this sheared run has other settings; use a new --run-dir") from None
        checkpointer = Checkpointer(run_dir, keep=tcfg.keep_checkpoints)
    writer = MetricsWriter(run_dir or None, echo=_progress(sc, p, log))
    try:
        if resuming:
            start, state, data_state = engine.resume(checkpointer, state, mesh)
            if start:
                log(f"sheared: resumed {run_dir} at step {start}")
        lc = LoopConfig(
            start_step=start,
            total_steps=p.steps,
            tokens_per_step=sc.tokens_per_step,
            log_every=tcfg.log_every,
            ckpt_every=tcfg.ckpt_every,
            stop_after=stop_after,
            progress=False,  # the progress lines instead
        )
        spec = BatchSpec(sc.batch_size, 1, jax.process_index(), jax.process_count())
        data = train_dataset(source, spec, sc.seed, p.steps)
        step_fn = _jitted_step(cfg, target, sc, p, mesh)
        state, _, signum = engine.fit(step_fn, state, data, data_state, mesh, lc, writer, checkpointer, on_step=on_step)
    finally:
        if checkpointer is not None:
            checkpointer.close()
        writer.close()
    if signum is not None:
        raise Stopped(str(run_dir), signum)
    return state


def _progress(sc: ShearedConfig, p: Plan, log: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    """A console line every log_every steps (the metrics record of every step goes to metrics.jsonl)."""
    t0 = time.time()

    def echo(row: dict[str, Any]) -> None:
        step = row["step"]
        if "lagrangian" in row and (step % sc.log_every == 0 or step == p.steps):
            sizes = " ".join(f"{g}={row[f'expected_{g}']:.1f}" for g in sg.GROUPS)
            head = f"sheared step {step}/{p.steps} loss {row['ce']:.4f} lag {row['lagrangian']:+.4f}"
            log(f"{head} {sizes} ({time.time() - t0:.0f}s)")

    return echo


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
    log_alpha = state["extra"]["log_alpha"]
    gaps = sg.check_reached(log_alpha, cfg, target, sc.fold_tolerance)
    gates, keep = sg.deterministic_gates(log_alpha, target)
    new_cfg, new_params = fold(cfg, state["params"], gates, keep)
    if shape_of(new_cfg) != shape_of(target):  # the top-k fold guarantees this; a mismatch is a bug
        raise PruneError(f"fold produced {shape_of(new_cfg)}, target is {shape_of(target)}")
    p = plan(sc, prune_tokens)
    report = {
        "prune_tokens": p.tokens,
        "prune_steps": p.steps,
        "data": {
            "dir": storage.absolute(store.data_dir),
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
