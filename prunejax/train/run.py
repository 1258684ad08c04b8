"""`train(...)`: one training run from a model source, a DATA_DIR and a token budget to a RUN_DIR.

RUN_DIR layout: run.json (the resolved config: train config, model source, data range and
fingerprint, budget and derived steps), metrics.jsonl, checkpoints/<step>/ (Orbax), final/ (a
MODEL_DIR). Calling `train` again on an existing RUN_DIR resumes from its newest readable
checkpoint, provided the resolved config is the same.

A RUN_DIR may be on object storage (gs://): run.json is one object, Orbax writes its checkpoints
there natively (it commits each step itself), metrics.jsonl is kept in a local staging file and
uploaded after every checkpoint and at the end (so the remote one always covers the newest
checkpoint), and final/ is a committed MODEL_DIR (marker last), which is also what says "done".

`open_run_dir`, `resume` and `fit` are the engine under `train`, also driven by the trained pruning
methods (Sheared-LLaMA's `--run-dir`): one run-dir check, one resume, one loop with its checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np

from prunejax import distributed, hf, locks, modelio, sharding, storage
from prunejax.config import PRESETS, ConfigError, LlamaConfig
from prunejax.data.pipeline import BatchSpec, WindowSource, eval_dataset, train_dataset, train_iterator
from prunejax.data.store import DataError, TokenStore
from prunejax.train import checkpoint as ckpt
from prunejax.train import config as config_lib
from prunejax.train import optim
from prunejax.train import state as state_lib
from prunejax.train.loop import LoopConfig, StopFlag, TrainingDiverged, run_loop
from prunejax.train.metrics import MetricsWriter, peak_flops
from prunejax.train.step import make_eval_step, make_train_step

log = logging.getLogger(__name__)
RUN_FILE = "run.json"
MODEL_FILES = (".json", ".yaml", ".yml")  # a model shape given as one file (`--scratch`), not a MODEL_DIR


def model_source(
    init: str | None, scratch: str | None, reinit: bool, seed: int
) -> tuple[LlamaConfig, Any, Any, str | None]:
    """(cfg, params, masks, tokenizer dir) for --init MODEL_DIR | --scratch MODEL_DIR|PRESET|YAML [--reinit]."""
    cfg, masks, tok, make_params = model_plan(init, scratch, reinit, seed)
    return cfg, make_params(), masks, tok


def model_plan(
    init: str | None, scratch: str | None, reinit: bool, seed: int
) -> tuple[LlamaConfig, Any, str | None, Callable[[], Any]]:
    """`model_source` with the random weights left for later: (cfg, masks, tokenizer dir, params()).
    A MODEL_DIR is read (and checked) here; a random init is drawn when `params()` is called, so the
    train step can compile meanwhile."""
    if (init is None) == (scratch is None):
        raise ConfigError("give exactly one of init (a MODEL_DIR to retrain) or scratch (a shape to train from random)")
    init = storage.local_dir(init) if init is not None else None  # a gs:// MODEL_DIR: its local copy
    if storage.is_remote(scratch) and not scratch.endswith(MODEL_FILES):  # a MODEL_DIR: its local copy
        scratch = storage.local_dir(scratch)
    src = init or scratch
    tok = src if src and os.path.exists(os.path.join(src, "tokenizer.json")) else None
    key = jax.random.key(seed)
    params = None
    if init is not None:  # any model source (MODEL_DIR, HF dir, RUN_DIR, .gguf): the one loader
        model = modelio.read(init)
        cfg, params, masks = model.cfg, model.params, model.masks
        hf.check_finite(params, init)  # else the first step's NaN loss would blame the learning rate
    elif scratch in PRESETS:
        cfg, masks = PRESETS[scratch], None
    elif os.path.isdir(scratch):
        cfg = hf.load_config(scratch)
        masks = hf.load_masks(scratch, cfg) if reinit else None
        if not reinit and os.path.exists(os.path.join(scratch, hf.MASKS_FILE)):  # said, not silently dropped
            print(
                f"note: --scratch {scratch} is sparse; training a dense random init of its shape "
                "(its masks are not used; --reinit keeps them: the sparse scratch control)",
                file=sys.stderr,
            )
    elif os.path.isfile(scratch) or storage.is_remote(scratch):  # a model file, local or one gs:// object
        cfg, masks = LlamaConfig.from_file(scratch), None
    else:
        raise ConfigError(
            f"scratch {scratch!r} is not a MODEL_DIR, a model YAML/JSON or a preset ({', '.join(PRESETS)})"
        )
    if reinit and not masks:
        raise ConfigError(f"--reinit keeps the masks of a sparse MODEL_DIR, but {src} has no masks.safetensors")

    def make_params() -> Any:
        if reinit:
            return state_lib.reinit_kept(cfg, masks, key)
        return params if init is not None else state_lib.random_params(cfg, key)

    return cfg, masks, tok, make_params


def check_inputs(cfg: LlamaConfig, tcfg: config_lib.TrainConfig, store: TokenStore, tokens: int) -> int:
    """The steps a token budget gives, once the DATA_DIR's vocabulary and seq_len are known to fit the model."""
    if store.vocab_size > cfg.vocab_size:
        raise DataError(
            f"DATA_DIR vocabulary ({store.vocab_size}) exceeds the model's vocab_size ({cfg.vocab_size}): "
            "token ids would index past the embedding; tokenize with the model's tokenizer"
        )
    if tcfg.seq_len > cfg.max_position_embeddings:
        raise ConfigError(
            f"seq_len {tcfg.seq_len} exceeds the model's max_position_embeddings {cfg.max_position_embeddings}"
        )
    steps = tokens // tcfg.tokens_per_step
    if steps < 1:
        raise ConfigError(
            f"token budget {tokens:,} is smaller than one step ({tcfg.global_batch} x {tcfg.seq_len} = "
            f"{tcfg.tokens_per_step:,} tokens)"
        )
    return steps


def _resolved(tcfg: config_lib.TrainConfig, **fields: Any) -> dict[str, Any]:
    return {"train": tcfg.to_dict(), **fields}


def open_run_dir(out_dir: str, resolved: dict[str, Any]) -> bool:
    """Create or validate RUN_DIR (its run.json is `resolved`); True when resuming an earlier run of the
    same config. Every process decides before process 0 writes, so all of them agree."""
    try:
        return _check_run_dir(out_dir, resolved)
    finally:
        distributed.barrier("run-dir")


# Train config keys that change what is logged, not what is trained: a run resumes across them (a RUN_DIR
# written before TensorBoard was on by default resumes with it on).
LOGGING_ONLY = ("tensorboard",)


def _comparable(resolved: dict[str, Any]) -> dict[str, Any]:
    train = {k: v for k, v in resolved.get("train", {}).items() if k not in LOGGING_ONLY}
    return {**resolved, "train": train}


def _check_run_dir(out_dir: str, resolved: dict[str, Any]) -> bool:
    remote = storage.is_remote(out_dir)
    if remote:
        storage.check_bucket(out_dir)
    path = storage.join(out_dir, RUN_FILE)
    if storage.exists(path):
        previous = _comparable(json.loads(storage.read_file(path)))
        current = _comparable(json.loads(json.dumps(resolved)))
        if previous != current:
            diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            raise ConfigError(f"{out_dir} holds a run with a different config (differs in: {', '.join(diff)})")
        return True
    if storage.exists(out_dir) if remote else os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} exists, is not empty and is not a RUN_DIR")
    distributed.barrier("run-dir-checked")
    if not remote:
        os.makedirs(out_dir, exist_ok=True)
    if jax.process_index() == 0:
        storage.write_file(path, json.dumps(resolved, indent=2).encode())  # atomic: a temporary file or one object
    return False


def check_micro_batch(tcfg: config_lib.TrainConfig, mesh: jax.sharding.Mesh) -> None:
    """The micro-batch must split evenly over the batch axes (data x fsdp) of the mesh."""
    batch_devices = sharding.batch_shards(mesh)
    if tcfg.micro_batch % batch_devices:
        raise ConfigError(
            f"micro-batch {tcfg.micro_batch} (global_batch / grad_accum) does not divide over "
            f"{batch_devices} data x fsdp devices"
        )


def is_complete(final_dir: str) -> bool:
    """Whether a run's final MODEL_DIR was written whole (renamed into place locally, committed remotely)."""
    if storage.is_remote(final_dir):
        return storage.committed(final_dir)
    return os.path.exists(os.path.join(final_dir, "config.json"))


def resume(
    checkpointer: ckpt.Checkpointer, state: state_lib.State, mesh: jax.sharding.Mesh
) -> tuple[int, state_lib.State, Any]:
    """(step, state, data-iterator state) of the newest readable checkpoint, or (0, `state`, None). A
    checkpoint holds its layers per layer (`state_lib.per_layer`); a stacked `state` gets them stacked."""
    restored = checkpointer.restore_latest(state_lib.per_layer_abstract(mesh, state))
    if restored is None:
        return 0, state, None
    step, restored_state, extra = restored
    if state_lib.is_stacked(state):
        restored_state = state_lib.restacked(mesh, restored_state)
    return step, restored_state, extra["iterator"]


def fit(
    step_fn: Callable[[state_lib.State, Any], tuple[state_lib.State, dict[str, jax.Array]]],
    state: state_lib.State,
    data: grain.MapDataset,
    data_state: Any,
    mesh: jax.sharding.Mesh,
    lc: LoopConfig,
    writer: MetricsWriter,
    checkpointer: ckpt.Checkpointer | None,
    *,
    evaluate: Callable[[state_lib.State], dict[str, float]] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[state_lib.State, str, int | None]:
    """Steps lc.start_step+1 .. lc.total_steps of `step_fn` (jitted) over `data` (`train_dataset`, positioned
    at `data_state`); checkpoints (state and iterator position) every lc.ckpt_every steps, on SIGTERM/SIGINT
    and at the end. Returns (state, 'done' | 'stopped', the signal that stopped it or None). Without a
    checkpointer nothing is saved, and signals keep their default action (there is nothing to resume)."""
    writer.truncate_after(lc.start_step)
    iterator = train_iterator(data, data_state)

    def batches() -> Any:
        while True:
            yield state_lib.global_batch(mesh, next(iterator))

    save = None
    if checkpointer is not None:

        def save(at: int, s: state_lib.State) -> None:
            s = state_lib.per_layer(mesh, s)  # a checkpoint's layout whatever the step scans
            checkpointer.save(at, s, {"iterator": iterator.get_state(), "step": at})
            sp = ckpt.realized_sparsity(s)
            if sp is not None:
                writer.write({"step": at, "tokens": at * lc.tokens_per_step, **sp})
            writer.sync()  # a remote metrics.jsonl covers every checkpoint it can be resumed from

    flag = StopFlag()
    with jax.set_mesh(mesh):  # activations follow the batch axes (sharding.constrain_batch)
        with flag if checkpointer is not None else contextlib.nullcontext(flag) as stop:
            state, status = run_loop(
                step_fn, state, batches(), lc, writer, save=save, evaluate=evaluate, on_step=on_step, stop=stop
            )
        unsaved = not lc.ckpt_every or lc.total_steps % lc.ckpt_every
        if save is not None and status == "done" and lc.start_step < lc.total_steps and unsaved:
            save(lc.total_steps, state)
    return state, status, flag.signum


@locks.writes("out_dir")  # one writer per RUN_DIR, held for the whole run
def train(
    out_dir: str,
    *,
    data_dir: str,
    tokens: int,
    init: str | None = None,
    scratch: str | None = None,
    reinit: bool = False,
    config: config_lib.TrainConfig | str | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    teacher: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run and write RUN_DIR; returns a summary (status, steps, last loss, val loss, final dir)."""
    tcfg = config if isinstance(config, config_lib.TrainConfig) else config_lib.load(config, overrides)
    if isinstance(config, config_lib.TrainConfig) and overrides:
        tcfg = tcfg.replace(**dict(config_lib.parse_override(o) for o in overrides))
    if (teacher is None) != (tcfg.distill_alpha == 0):
        raise ConfigError("distillation needs both a teacher MODEL_DIR and distill_alpha > 0")
    if storage.is_remote(out_dir):
        storage.check_bucket(out_dir)  # before the model is built
    store = TokenStore(data_dir)
    cfg, masks, tok_dir, make_params = model_plan(init, scratch, reinit, tcfg.seed)
    total_steps = check_inputs(cfg, tcfg, store, tokens)
    mesh = mesh or sharding.make_mesh(tcfg.mesh_data, tcfg.mesh_fsdp, tcfg.mesh_tp)
    check_micro_batch(tcfg, mesh)
    spec = BatchSpec(tcfg.global_batch, tcfg.grad_accum, jax.process_index(), jax.process_count())
    # both ranges are read and their token ids checked here, before the run directory or any compile
    source = WindowSource(store, tcfg.data_split, tcfg.data_offset, tcfg.data_count, tcfg.seq_len)
    val_source = WindowSource(store, tcfg.val_split, 0, None, tcfg.seq_len) if tcfg.val_batches else None
    windows_needed = total_steps * tcfg.global_batch
    resolved = _resolved(
        tcfg,
        model={"init": init, "scratch": scratch, "reinit": reinit, "config": cfg.to_hf_dict()},
        data={"dir": storage.absolute(data_dir), "fingerprint": store.fingerprint, "windows": len(source)},
        tokens=tokens,
        steps=total_steps,
        teacher=teacher,
    )
    if jax.process_index() == 0:
        print(
            f"{tokens:,} tokens / ({tcfg.global_batch} seqs x {tcfg.seq_len} tokens = "
            f"{tcfg.tokens_per_step:,} per step) "
            f"= {total_steps:,} steps ({tokens - total_steps * tcfg.tokens_per_step:,} tokens left over); "
            f"{windows_needed / len(source):.2f} epochs of {len(source):,} windows"
        )
    resuming = open_run_dir(out_dir, resolved)

    opt = optim.optimizer(tcfg, total_steps)
    stacked = state_lib.scans_layers(cfg, masks, tcfg.attention, mesh)  # one array per weight kind
    step_fn, eval_fn, ahead = None, None, None
    if teacher is None:  # the step and eval compile on a thread while the weights are drawn and placed
        step_fn = make_train_step(cfg, tcfg, opt, total_steps, None, mesh)
        abstract = state_lib.abstract_state(cfg, masks, opt, tcfg.seed, mesh, stacked)
        jitted = state_lib.jit_train_step(step_fn, mesh, abstract)
        batch = state_lib.abstract_batch(mesh, (tcfg.grad_accum, tcfg.micro_batch, tcfg.seq_len))
        calls = [(jitted, (abstract, batch))]
        if tcfg.val_batches:
            eval_fn = state_lib.jit_eval_step(make_eval_step(cfg, tcfg), mesh, abstract["params"])
            eval_batch = state_lib.abstract_batch(mesh, (tcfg.micro_batch, tcfg.seq_len), accumulated=False)
            calls.append((eval_fn, (abstract["params"], eval_batch)))
        ahead = state_lib.compile_ahead(mesh, *calls)
    state = state_lib.place_state(mesh, state_lib.init_state(make_params(), masks, opt, tcfg.seed, stacked=stacked))
    checkpointer = ckpt.Checkpointer(out_dir, keep=tcfg.keep_checkpoints, use_async=tcfg.async_checkpoint)
    start_step, data_state = 0, None
    if resuming:
        start_step, state, data_state = resume(checkpointer, state, mesh)
        if start_step and jax.process_index() == 0:
            print(f"resuming {out_dir} from step {start_step:,}")
    final_dir = storage.join(out_dir, "final")
    if start_step == total_steps and is_complete(final_dir):
        checkpointer.close()
        if jax.process_index() == 0:
            print(f"{out_dir} is already complete ({total_steps:,} steps)")
        return {
            "run_dir": out_dir,
            "steps": total_steps,
            "start_step": start_step,
            "status": "done",
            "final": final_dir,
        }
    writer = MetricsWriter(out_dir, tensorboard=tcfg.tensorboard)

    teacher_params, teacher_cfg = None, None
    if teacher is not None:
        teacher_model = modelio.load(teacher, place=sharding.placer(mesh))
        teacher_cfg, teacher_params = teacher_model.cfg, teacher_model.params
        if teacher_cfg.vocab_size != cfg.vocab_size:
            raise ConfigError(
                f"teacher vocab_size {teacher_cfg.vocab_size} differs from the student's {cfg.vocab_size}"
            )
    if step_fn is None:
        step_fn = make_train_step(cfg, tcfg, opt, total_steps, teacher_cfg, mesh)
        jitted = state_lib.jit_train_step(step_fn, mesh, state, teacher_params)

    def step(s: Any, b: Any) -> Any:
        return jitted(s, b) if teacher_params is None else jitted(s, b, teacher_params)

    evaluate = None
    if val_source is not None:
        val_spec = BatchSpec(tcfg.micro_batch, 1, jax.process_index(), jax.process_count())
        val_data = eval_dataset(val_source, val_spec, tcfg.val_batches)
        if eval_fn is None:
            eval_fn = state_lib.jit_eval_step(make_eval_step(cfg, tcfg), mesh, state["params"])

        def evaluate(s: Any) -> dict[str, float]:
            if ahead is not None:
                ahead[-1].result()  # compiled ahead (or its tracing error, raised here)
            losses = [eval_fn(s["params"], state_lib.global_batch(mesh, b, accumulated=False)) for b in val_data]
            val_loss = float(np.mean(np.asarray(jax.device_get(losses), np.float64)))
            if not np.isfinite(val_loss):  # a NaN validation loss is never logged as a result (nor final/ written)
                raise TrainingDiverged(
                    f"validation loss {val_loss} on {data_dir} split {tcfg.val_split!r}: the model's outputs are "
                    "not finite there (its training loss was); final/ is not written"
                )
            return {"val_loss": val_loss}

    lc = LoopConfig(
        start_step=start_step,
        total_steps=total_steps,
        tokens_per_step=tcfg.tokens_per_step,
        flops_per_step=cfg.flops_per_token(tcfg.seq_len, training=True) * tcfg.tokens_per_step,
        peak_flops=peak_flops(tcfg.peak_tflops),
        log_every=tcfg.log_every,
        ckpt_every=tcfg.ckpt_every,
        eval_every=tcfg.val_every,
        stop_after=stop_after,
        progress=progress and jax.process_index() == 0,
    )
    data = train_dataset(source, spec, tcfg.seed, total_steps)
    summary: dict[str, Any] = {"run_dir": out_dir, "steps": total_steps, "start_step": start_step}
    if ahead is not None:
        ahead[0].result()  # the step's executable is in JAX's cache (or its tracing error is raised here)
    try:
        state, status, signum = fit(
            step, state, data, data_state, mesh, lc, writer, checkpointer, evaluate=evaluate, on_step=on_step
        )
        summary["status"] = status
        summary["signal"] = signum  # SIGTERM/SIGINT that stopped the run, None otherwise
        if status == "done":
            with jax.set_mesh(mesh):
                if evaluate is not None:
                    val = evaluate(state)
                    writer.write({"step": total_steps, "tokens": total_steps * tcfg.tokens_per_step, **val})
                    summary.update(val)
                checkpointer.wait()
                provenance = {"stage": "train", **{k: resolved[k] for k in ("model", "data", "tokens", "steps")}}
                provenance["model"] = {k: v for k, v in provenance["model"].items() if k != "config"}
                final = state_lib.per_layer(mesh, {"params": state["params"], "masks": state["masks"]})
                hf.save(  # every process gathers its shards; process 0 writes, the others wait for it
                    final_dir,
                    cfg,
                    final["params"],
                    final["masks"] or None,
                    tokenizer_dir=store.tokenizer_dir or tok_dir,
                    provenance=provenance,
                    overwrite=True,
                )
            summary["final"] = final_dir
    finally:
        checkpointer.close()
        writer.close()
    return summary
