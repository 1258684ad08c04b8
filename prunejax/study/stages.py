"""What each kind of stage does: one function per kind, each a call of the library function a verb calls
(`data.api.train_tokenizer` and `prepare_data`, `convert.convert`, `train.run.train`, `prune.run.prune_model`,
`prunejax.api.evaluate`) with the stage's typed spec and the paths the runner gives it. `STAGES` maps a stage's
kind to its function; the runner (`study.runner`) calls them, and they see it only as `StudyPaths`.

Every verb's errors arrive here as the exceptions they are (nothing parses flags or exits); the runner marks
the stage failed with the message. A stage function writes only under `runner.out(stage.id)`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any, Protocol

from prunejax import distributed, storage
from prunejax.study.plan import (
    BaselineSpec,
    DataSpec,
    EvaluateSpec,
    ImportSpec,
    PretrainSpec,
    PruneSpec,
    RetrainSpec,
    ScratchSpec,
    Stage,
    TokenizerSpec,
)

TEXT_RECORDS = (".json", ".jsonl", ".yaml", ".txt", ".log")


class StudyPaths(Protocol):
    """What a stage needs of the runner: where stages write, and the scratch runs it can reuse."""

    dir: str

    def out(self, stage_id: str) -> str: ...
    def model_dir(self, stage_id: str) -> str: ...
    def scratch_source(self, stage: Stage) -> str: ...
    def scratch_twin(self, stage: Stage) -> str | None: ...


def write_json(path: str, obj: Any) -> None:
    """Atomic JSON write (a temporary file renamed into place, or one object) by the writer process; the
    others wait."""
    distributed.one_writer(f"json {path}", lambda: _write_json(path, obj))


def _write_json(path: str, obj: Any) -> None:
    """The same write, by the calling process alone."""
    storage.write_file(path, json.dumps(obj, indent=2, default=str).encode())


def tokenizer_stage(runner: StudyPaths, stage: Stage) -> None:
    from prunejax.data.api import train_tokenizer

    spec = stage.spec
    assert isinstance(spec, TokenizerSpec)
    source = _documents(spec.corpus, spec.text, spec.max_documents)
    train_tokenizer(runner.out(stage.id), **source, vocab_size=spec.vocab, overwrite=True)


def data_stage(runner: StudyPaths, stage: Stage) -> None:
    from prunejax.data.api import prepare_data
    from prunejax.data.store import TokenStore

    d = stage.spec
    assert isinstance(d, DataSpec)
    if d.data_dir:
        store = TokenStore(d.data_dir)  # its meta.json, then every token id of every split, before any stage reads it
        for split in store.splits():
            store.check(split)
        return
    tokenizer = runner.out("tokenizer") if d.tokenizer == "train" else d.tokenizer
    source = _documents(d.corpus, d.text, d.max_documents)
    prepare_data(runner.out(stage.id), tokenizer=tokenizer, **source, val_fraction=d.val_fraction, overwrite=True)


def _documents(corpus: str | None, text: tuple[str, ...], max_documents: int) -> dict[str, Any]:
    """A corpus or text files, as the data entry functions take them."""
    return {**({"corpus": corpus} if corpus else {"text": text}), "max_documents": max_documents}


def parent_stage(runner: StudyPaths, stage: Stage) -> None:
    """An imported parent is converted; any other is pretrained from random init on [0, P]."""
    spec = stage.spec
    if isinstance(spec, ImportSpec):
        from prunejax.convert import convert

        convert(spec.import_, runner.out(stage.id), overwrite=True)
        return
    from prunejax.data.store import TokenStore

    assert isinstance(spec, PretrainSpec)
    model = spec.model
    if isinstance(model, dict):  # inline fields: a model file with the vocabulary of the study's data
        vocab = TokenStore(runner.out("data")).vocab_size
        model = storage.join(runner.dir, "parent.model.json")
        write_json(model, {**spec.model, "vocab_size": vocab})
    _train(runner, stage, offset=0, tokens=spec.tokens, scratch=model)


def prune_stage(runner: StudyPaths, stage: Stage) -> None:
    """Sheared trains its masks on the study's data; every other method calibrates on it."""
    from prunejax.prune.run import prune_model

    s = stage.spec
    assert isinstance(s, PruneSpec)
    data = runner.out("data")
    if s.method == "sheared":
        how: dict[str, Any] = {"data": data, "prune_tokens": s.sheared_tokens, "seed": s.seed}
        how["sheared_config"] = s.sheared_config
    else:
        cal = s.calibration
        how = {"calib": data, "calib_samples": cal.samples, "calib_seq_len": cal.seq_len, "batch_size": cal.batch_size}
        if s.method == "owl":
            how.update(owl_m=s.owl_m, owl_lambda=s.owl_lambda, owl_map=s.owl_map)
    model = runner.model_dir("parent")
    prune_model(model, s.method, ratio=s.ratio, pattern=s.pattern, **how, out=runner.out(stage.id), overwrite=True)


def retrain_stage(runner: StudyPaths, stage: Stage) -> None:
    spec = stage.spec
    assert isinstance(spec, RetrainSpec)
    _train(runner, stage, offset=spec.offset, tokens=spec.tokens, init=runner.model_dir(stage.deps[0]))


def baseline_stage(runner: StudyPaths, stage: Stage) -> None:
    """The dense shape closest to the pruned model's parameter count or FLOPs, as a config.json."""
    from prunejax import hf
    from prunejax.study.baselines import matched_config

    spec = stage.spec
    assert isinstance(spec, BaselineSpec)
    parent = hf.load_config(runner.model_dir("parent"))
    pruned_dir = runner.model_dir(stage.deps[1])
    pruned = hf.load_config(pruned_dir)
    sparsity = hf.load_provenance(pruned_dir).get("sparsity", {})
    pruned_weights = sparsity.get("mask_sparsity", 0.0) * sparsity.get("masked_weights", 0)
    density = 1.0 - pruned_weights / pruned.linear_params()
    match = matched_config(parent, pruned, density=density, quantity=spec.match, seq_len=spec.seq_len)
    out = runner.out(stage.id)
    write_json(storage.join(out, "config.json"), match.cfg.to_hf_dict())
    write_json(
        storage.join(out, "match.json"),
        {
            "quantity": match.quantity,
            "target": match.target,
            "achieved": match.achieved,
            "rel_error": match.rel_error,
            "pruned_density": density,
        },
    )


def scratch_stage(runner: StudyPaths, stage: Stage) -> None:
    """Random init of a shape; a finished run of the same shape, tokens, recipe, seed and data is reused."""
    spec = stage.spec
    assert isinstance(spec, ScratchSpec)
    out = runner.out(stage.id)
    # decided once: another process looking a moment later could see process 0's copy and train instead
    twin = distributed.decided(
        f"twin of {stage.id}", lambda: None if storage.exists(out) else runner.scratch_twin(stage)
    )
    if twin is not None:  # the same random-init run: take its output instead of training it twice

        def reuse() -> None:
            tmp = f"{out}.reuse-tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(runner.out(twin), tmp, copy_function=_link_or_copy)
            write_json(os.path.join(tmp, "same_as.json"), {"stage": twin})
            os.replace(tmp, out)

        distributed.one_writer(f"reuse {stage.id}", reuse)
        print(f"{stage.id}: same shape, tokens, recipe, seed and data as {twin}; its run reused")
        return
    _train(runner, stage, offset=0, tokens=spec.tokens, scratch=runner.scratch_source(stage), reinit=spec.reinit)


def eval_stage(runner: StudyPaths, stage: Stage) -> None:
    from prunejax.api import evaluate

    spec = stage.spec
    assert isinstance(spec, EvaluateSpec)
    e = spec.eval
    out = storage.join(runner.out(stage.id), "results.json")
    results = evaluate(
        runner.model_dir(stage.deps[0]),
        out=out,
        data=runner.out("data"),
        seq_len=e.seq_len,
        batch_size=e.batch_size,
        max_tokens=e.max_tokens or None,  # 0: the whole validation split
        overwrite=True,
    )
    v = results["validation"]
    print(f"wrote {out}: validation loss {v['nll']:.4f} ({v['scored_tokens']:,} tokens)")  # the stage's log


def _train(runner: StudyPaths, stage: Stage, *, offset: int, tokens: int, **source: Any) -> None:
    """`train` on the study's data from `offset` for `tokens` tokens; `source` is init=, or scratch= [reinit=].
    A run stopped by a signal returns with a checkpoint and no final/, which the runner reports as interrupted."""
    from prunejax.train.run import train

    spec = stage.spec
    assert isinstance(spec, PretrainSpec | RetrainSpec | ScratchSpec)
    seed = spec.seed if isinstance(spec, RetrainSpec | ScratchSpec) else 0
    # a window of seq_len inputs needs seq_len + 1 tokens: the range holds one token more than the budget
    overrides = [*spec.train.overrides, f"data_offset={offset}", f"data_count={tokens + 1}", f"seed={seed}"]
    train(
        runner.out(stage.id),
        data_dir=runner.out("data"),
        tokens=tokens,
        **source,
        config=spec.train.config,
        overrides=overrides,
        progress=False,
    )


def _link_or_copy(src: str, dst: str) -> None:
    """Weights and checkpoints are hard-linked: no space, the copy stays whole if the original is removed,
    and nothing rewrites them in place. Text records (metrics.jsonl, which a resumed run appends to,
    JSON, YAML, logs) are copied so the two runs never share them."""
    if not src.endswith(TEXT_RECORDS):
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or no hard links
            pass
    shutil.copy2(src, dst)


# a stage's kind -> what runs it
STAGES: dict[str, Callable[[StudyPaths, Stage], None]] = {
    "tokenizer": tokenizer_stage,
    "data": data_stage,
    "parent": parent_stage,
    "prune": prune_stage,
    "retrain": retrain_stage,
    "baseline": baseline_stage,
    "scratch": scratch_stage,
    "eval": eval_stage,
}
