"""The Python API: every verb over one model value, `Model(cfg, params, masks)`, that carries its masks.

    model = prunejax.load("models/smollm2")                  # MODEL_DIR, HF dir, RUN_DIR, gs:// or .gguf
    calib = prunejax.calibration_tokens("data/kjv", samples=16, seq_len=256)
    model = prunejax.prune(model, "wanda", calib, ratio=0.5)  # masks composed, carried or refused
    model = prunejax.prune(model, "minitron-depth", calib, ratio=0.25)
    prunejax.save("models/out", model)                        # masks.safetensors beside the weights
    model = prunejax.train(model, "data/kjv", tokens=400_000, out="runs/retrain")  # masks held at zero
    results = prunejax.evaluate(model, data="data/kjv")

The CLI verbs and the study call the same library functions (`prune.run.prune_model`, `train.run.train`,
`evaluate.results.evaluate_model`) that these wrap; the verbs' heavy modules are imported on first use,
so `import prunejax` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prunejax import calibrate, storage
from prunejax.modelio import Model, load, save
from prunejax.prune.compose import prune

__all__ = ["Model", "calibration_tokens", "evaluate", "load", "perplexity", "prune", "save", "train"]


def calibration_tokens(
    data_dir: str, *, samples: int = calibrate.DEFAULT_SAMPLES, seq_len: int = calibrate.DEFAULT_SEQ_LEN
) -> np.ndarray:
    """The first `samples` x `seq_len` tokens of a DATA_DIR's train split, int32 [N, L]: what `prune` calibrates on."""
    return calibrate.calibration_tokens(data_dir, samples, seq_len)


def train(
    model: Model | str,
    data_dir: str,
    *,
    tokens: int,
    out: str,
    scratch: bool = False,
    reinit: bool = False,
    config: Any = None,
    overrides: Sequence[str] = (),
    teacher: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    init_dir: str | None = None,
) -> Model:
    """Train `model` (a Model, or a MODEL_DIR path) on `tokens` tokens of `data_dir` into the RUN_DIR `out` and
    return the trained model (its `final/`), masks held: every pruned weight stays exactly zero. `scratch`
    trains a random init of the model's shape instead (`reinit` keeps its masks); `config` is a train YAML or
    TrainConfig with key=value `overrides`. A Model value is first written as a MODEL_DIR to `init_dir`
    (default `<out>.init` beside the RUN_DIR, kept: the run's provenance names it, and the same call resumes).
    A run stopped by SIGTERM/SIGINT raises `prunejax.train.loop.Stopped` after saving a checkpoint."""
    from prunejax.train.loop import Stopped
    from prunejax.train.run import train as train_run

    if reinit and not scratch:
        raise ValueError("reinit=True re-initializes a scratch run's kept weights: give scratch=True with it")
    if isinstance(model, Model):
        init_dir = init_dir or f"{str(out).rstrip('/')}.init"
        if storage.absolute(init_dir).rstrip("/") == storage.absolute(str(out)).rstrip("/"):
            raise ValueError(f"init_dir {init_dir} is the RUN_DIR out; the model must be written elsewhere")
        # replaced only when it is this call's MODEL_DIR from before (a resumed run); anything else is refused
        earlier = storage.exists(storage.join(init_dir, "config.json"))
        save(init_dir, model, overwrite=earlier)
        source = init_dir
    elif isinstance(model, str | os.PathLike):
        source = str(model)
    else:
        raise TypeError(f"model must be a prunejax.Model or a MODEL_DIR path, got {type(model).__name__}")
    how = {"scratch": source, "reinit": reinit} if scratch else {"init": source}
    summary = train_run(
        out,
        data_dir=data_dir,
        tokens=tokens,
        **how,
        config=config,
        overrides=list(overrides),
        teacher=teacher,
        mesh=mesh,
        progress=progress,
    )
    if summary["status"] != "done":
        raise Stopped(out, summary.get("signal") or 0)
    trained = load(summary["final"])
    return trained.replace(provenance={**trained.provenance, "run": summary})


def evaluate(
    model: Model | str,
    *,
    data: str | None = None,
    text: Sequence[str] | None = None,
    tasks: Sequence[str] | str | None = None,
    task_data: str | None = None,
    seq_len: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    dtype: Any = jnp.float32,
    mesh: jax.sharding.Mesh | None = None,
    out: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Validation loss on a DATA_DIR (`data`), perplexity of text files (`text`) and zero-shot `tasks` ('all',
    'a,b' or a list; files in `task_data`) of `model` (a Model, or a MODEL_DIR, HF dir, RUN_DIR or .gguf path),
    as the results dict `prunejax eval` writes; also written to the results.json `out` when given (an existing
    one is refused before the evaluation unless `overwrite`)."""
    from prunejax.evaluate import tasks as tasks_lib
    from prunejax.evaluate.results import evaluate_model, write_results

    counts = {"--seq-len": seq_len, "--stride": stride, "--max-tokens": max_tokens, "--limit": limit}
    for flag, value in {**counts, "--batch-size": batch_size}.items():  # what the CLI's argparse types check
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if out is not None:
        storage.refuse_existing(out, overwrite, directory=False)
    task_names = tasks_lib.parse_task_names(tasks) if isinstance(tasks, str) else list(tasks or []) or None
    results = evaluate_model(
        model,
        data=data,
        text=list(text) if text else None,
        task_names=task_names,
        task_data=task_data,
        seq_len=seq_len,
        stride=stride,
        max_tokens=max_tokens,
        limit=limit,
        batch_size=batch_size,
        dtype=dtype,
        mesh=mesh,
    )
    if out is not None:
        write_results(out, results, overwrite=overwrite)
    return results


def perplexity(
    model: Model, tokens: np.ndarray, seq_len: int, *, stride: int | None = None, batch_size: int = 8
) -> dict[str, Any]:
    """Mean NLL, perplexity and scored-token count of `model` on one stream of token ids, in windows of
    `seq_len` advanced by `stride` (default `seq_len`), as `evaluate` scores text files."""
    from prunejax.evaluate.perplexity import stream_nll

    if not isinstance(model, Model):
        raise TypeError(f"model must be a prunejax.Model, got {type(model).__name__}")
    return stream_nll(model.cfg, model.params, tokens, seq_len, stride=stride, batch_size=batch_size)
