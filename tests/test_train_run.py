"""`train` end to end on real text (KJV): loss falls, exact resume after SIGTERM, fallback, sparse runs, bad input."""

import glob
import itertools
import json
import logging
import math
import os
import signal

import jax
import numpy as np
import pytest
import yaml
from conftest import TRAIN_HF

from prunejax import cli, hf, tree
from prunejax.config import ConfigError, LlamaConfig
from prunejax.data.prepare import prepare
from prunejax.data.sources import kjv_documents
from prunejax.data.store import DataError
from prunejax.data.tokenizer import train_bpe
from prunejax.train import config as config_lib
from prunejax.train import state as state_lib
from prunejax.train.loop import TrainingDiverged
from prunejax.train.metrics import read_metrics
from prunejax.train.run import model_source, train

VOCAB = 320
MODEL = {"vocab_size": VOCAB, **TRAIN_HF}
BASE = ["seq_len=32", "global_batch=8", "peak_lr=3e-3", "val_batches=0", "peak_tflops=1.0"]
STEP_TOKENS = 8 * 32


@pytest.fixture(scope="module")
def kjv(tmp_path_factory):
    """A DATA_DIR of the first 150 KJV chapters with a 320-token BPE trained on them."""
    root = tmp_path_factory.mktemp("kjv")
    tok = train_bpe(itertools.islice(kjv_documents(), 150), str(root / "tok"), vocab_size=VOCAB)
    return prepare(itertools.islice(kjv_documents(), 150), tok, str(root / "data"), progress=False)


@pytest.fixture(scope="module")
def model_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.yaml"
    path.write_text(yaml.safe_dump(MODEL))
    return str(path)


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def test_loss_falls_on_real_text(kjv, model_yaml, tmp_path):
    out = str(tmp_path / "run")
    over = [*BASE[:-2], "val_batches=2", "peak_tflops=1.0"]
    summary = train(out, data_dir=kjv, tokens=40 * STEP_TOKENS, scratch=model_yaml, overrides=over, progress=False)
    losses = _losses(out)
    assert sorted(losses) == list(range(1, 41))
    assert losses[1] == pytest.approx(math.log(VOCAB), abs=0.1)  # random init predicts ~uniformly
    assert np.mean([losses[s] for s in range(36, 41)]) < losses[1] - 1.0
    assert summary["val_loss"] < math.log(VOCAB) - 1.0
    record = read_metrics(out)[5]
    assert {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(record)
    assert record["tokens"] == record["step"] * STEP_TOKENS
    cfg, params = hf.load(summary["final"])
    assert cfg.vocab_size == VOCAB and os.path.exists(os.path.join(summary["final"], "tokenizer.json"))
    resolved = json.load(open(os.path.join(out, "run.json")))
    assert resolved["steps"] == 40 and resolved["train"]["seq_len"] == 32


def test_sigterm_resume_and_fallback_match_uninterrupted_run(kjv, model_yaml, tmp_path, caplog):
    over = [*BASE, "ckpt_every=2", "keep_checkpoints=3"]
    tokens = 10 * STEP_TOKENS
    full = str(tmp_path / "full")
    train(full, data_dir=kjv, tokens=tokens, scratch=model_yaml, overrides=over, progress=False)

    cut = str(tmp_path / "cut")
    over = [*over, "async_checkpoint=true"]  # the interrupted run also exercises async saves

    def preempt(step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    s = train(cut, data_dir=kjv, tokens=tokens, scratch=model_yaml, overrides=over, progress=False, on_step=preempt)
    assert s["status"] == "stopped"
    assert sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(cut, "checkpoints", "[0-9]*"))) == [2, 4, 5]
    # the newest checkpoint is damaged: resume falls back to step 4 with a warning
    for f in glob.glob(os.path.join(cut, "checkpoints", "5", "state", "**", "*"), recursive=True):
        if os.path.isfile(f):
            with open(f, "wb") as fh:
                fh.write(b"garbage")
    with caplog.at_level(logging.WARNING):
        s = train(cut, data_dir=kjv, tokens=tokens, scratch=model_yaml, overrides=over, progress=False)
    assert s["start_step"] == 4 and s["status"] == "done"
    assert "unreadable" in caplog.text
    assert _losses(cut) == _losses(full)  # every loss, bit for bit, including steps 5..10 recomputed
    again = train(cut, data_dir=kjv, tokens=tokens, scratch=model_yaml, overrides=over, progress=False)
    assert again["start_step"] == 10 and again["status"] == "done"  # a finished run is not redone
    with pytest.raises(ConfigError, match="different config .differs in: train"):
        train(cut, data_dir=kjv, tokens=tokens, scratch=model_yaml, overrides=[*over, "peak_lr=1e-3"], progress=False)
    assert _losses(cut) == _losses(full)
    _, a = hf.load(os.path.join(full, "final"))
    _, b = hf.load(os.path.join(cut, "final"))
    for (path, x), (_, y) in zip(tree.leaf_paths(a), tree.leaf_paths(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg="/".join(path))


def test_truncated_newest_checkpoint_is_skipped_and_rewritten(kjv, model_yaml, tmp_path, caplog):
    over = [*BASE, "ckpt_every=2", "keep_checkpoints=3"]
    kw = {"data_dir": kjv, "tokens": 6 * STEP_TOKENS, "scratch": model_yaml, "overrides": over, "progress": False}
    full = str(tmp_path / "full")
    train(full, **kw)
    cut = str(tmp_path / "cut")
    assert train(cut, stop_after=4, **kw)["status"] == "stopped"
    assert _saved_steps(cut) == [2, 4]
    # a crash mid-write: every file of the newest checkpoint cut to half its length
    for f in glob.glob(os.path.join(cut, "checkpoints", "4", "**", "*"), recursive=True):
        if os.path.isfile(f):
            os.truncate(f, os.path.getsize(f) // 2)
    with caplog.at_level(logging.WARNING):
        s = train(cut, **kw)  # resumes from 2 and writes step 4 again: no hand needed
    assert s["start_step"] == 2 and s["status"] == "done"
    assert "checkpoint 4" in caplog.text and "unreadable" in caplog.text
    assert _saved_steps(cut) == [2, 4, 6]
    assert _losses(cut) == _losses(full)


def test_sigint_saves_a_checkpoint_and_exits_130(kjv, model_yaml, tmp_path):
    import subprocess
    import sys
    import time

    out = str(tmp_path / "run")
    argv = [sys.executable, "-m", "prunejax.cli", "train", "--scratch", model_yaml, "--data", kjv]
    argv += ["--tokens", str(20000 * STEP_TOKENS), "--out", out, "--no-progress", *BASE]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, metrics = time.time() + 240, os.path.join(out, "metrics.jsonl")
        while not (os.path.exists(metrics) and os.path.getsize(metrics)):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[0].decode()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # training is under way: the loop saves and stops
        text = proc.communicate(timeout=240)[0].decode()
    finally:
        proc.kill()
    assert proc.returncode == 130, text[-3000:]
    assert "stopped at a checkpoint" in text
    saved = _saved_steps(out)
    assert len(saved) == 1 and 0 < saved[0] < 20000


def _sparse_model_dir(path):
    cfg = LlamaConfig.from_hf_dict(MODEL)
    params = jax.device_get(state_lib.random_params(cfg, jax.random.key(7)))
    rng = np.random.default_rng(0)
    masks = {}
    for p, w in tree.leaf_paths(params):
        if w.ndim >= 2 and p[0] == "layers":
            m = rng.random(w.shape) < 0.4
            tree.set_path(masks, p, m)
            tree.set_path(params, p, np.where(m, w, 0).astype(np.float32))
    hf.save(path, cfg, params, masks)
    return cfg, params, masks


@pytest.mark.parametrize("source", ["scratch", "sparse init"])
def test_the_step_and_eval_compile_once_ahead_of_the_first_step(kjv, model_yaml, tmp_path, caplog, source):
    """train compiles its step and eval step from shapes on a thread while the weights are drawn; the loop's
    calls must find those programs (shapes, dtypes or shardings that differ would compile each again)."""
    caplog.set_level(logging.DEBUG, logger="jax._src.dispatch")
    over = [*BASE[:-2], "val_batches=1", "peak_tflops=1.0"]
    how = {"scratch": model_yaml} if source == "scratch" else {"init": str(tmp_path / "sparse")}
    if source != "scratch":
        _sparse_model_dir(how["init"])
    train(str(tmp_path / "run"), data_dir=kjv, tokens=3 * STEP_TOKENS, overrides=over, progress=False, **how)
    compiled = [r.getMessage().split(" in ")[0] for r in caplog.records if "Finished XLA compilation" in r.message]
    assert compiled.count("Finished XLA compilation of jit(train_step)") == 1, compiled
    assert compiled.count("Finished XLA compilation of jit(eval_step)") == 1, compiled


def test_reinit_keeps_mask_and_changes_every_kept_weight(tmp_path):
    src = str(tmp_path / "sparse")
    _, params, masks = _sparse_model_dir(src)
    _, fresh, fresh_masks, _ = model_source(None, src, True, seed=0)
    for path, m in tree.leaf_paths(masks):
        np.testing.assert_array_equal(np.asarray(tree.get_path(fresh_masks, path)), m)
        w, old = np.asarray(tree.get_path(fresh, path)), tree.get_path(params, path)
        assert np.all(w[~m] == 0) and np.all(w[m] != old[m]), "/".join(path)
        assert abs(np.std(w[m]) - 0.02 * 0.88) < 0.004  # truncated normal std 0.02 (truncation at 2σ: x0.88)
    with pytest.raises(ConfigError, match="no masks"):
        model_source(None, "tiny", True, seed=0)


def test_scratch_of_a_sparse_model_dir_says_its_masks_are_not_used(tmp_path, capsys):
    src = str(tmp_path / "sparse")
    _sparse_model_dir(src)
    cfg, params, masks, _ = model_source(None, src, False, seed=0)
    assert masks is None and "is sparse; training a dense random init of its shape" in capsys.readouterr().err
    assert all(np.count_nonzero(np.asarray(w)) == np.size(w) for _, w in tree.leaf_paths(params))


def test_init_from_a_non_finite_model_is_refused(tmp_path):
    src = str(tmp_path / "sparse")
    cfg, params, masks = _sparse_model_dir(src)
    params["layers"]["0"]["self_attn"]["v_proj"][0, 0, 0] = np.inf
    hf.save(str(tmp_path / "inf"), cfg, params, masks)
    with pytest.raises(hf.CheckpointError, match="inf: weight layers/0/self_attn/v_proj holds NaN or Inf"):
        model_source(str(tmp_path / "inf"), None, False, seed=0)


def test_sparse_retrain_keeps_mask(kjv, tmp_path):
    src = str(tmp_path / "sparse")
    _, _, masks = _sparse_model_dir(src)
    s = train(str(tmp_path / "run"), data_dir=kjv, tokens=15 * STEP_TOKENS, init=src, overrides=BASE, progress=False)
    cfg, params = hf.load(s["final"])
    final_masks = hf.load_masks(s["final"], cfg)
    for path, m in tree.leaf_paths(masks):
        np.testing.assert_array_equal(np.asarray(tree.get_path(final_masks, path)), m)
        assert np.all(np.asarray(tree.get_path(params, path))[~m] == 0), "/".join(path)
    sparsity = hf.load_provenance(s["final"])["sparsity"]
    assert sparsity["zero_fraction"] == pytest.approx(sparsity["mask_sparsity"], abs=1e-4)
    logged = [r for r in read_metrics(str(tmp_path / "run")) if "mask_sparsity" in r]
    assert logged and logged[-1]["mask_sparsity"] == pytest.approx(0.6, abs=0.01)


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(kjv, model_yaml, tmp_path):
    out = str(tmp_path / "run")
    over = [*BASE, "peak_lr=1e30", "warmup_frac=0", "ckpt_every=1"]
    with pytest.raises(TrainingDiverged, match=r"at step (\d+)") as err:
        train(out, data_dir=kjv, tokens=10 * STEP_TOKENS, scratch=model_yaml, overrides=over, progress=False)
    bad = int(err.value.args[0].split("at step ")[1].split(":")[0])
    saved = sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(out, "checkpoints", "[0-9]*")))
    assert saved and max(saved) < bad


def _saved_steps(run_dir):
    return sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(run_dir, "checkpoints", "[0-9]*")))


def test_non_finite_state_is_never_saved_nor_resumed(kjv, model_yaml, tmp_path):
    # 1e39 is a finite config value that overflows float32: the first update turns every weight into Inf/NaN
    # while step 1's loss (computed before the update) is still finite
    out = str(tmp_path / "run")
    over = [*BASE, "peak_lr=1e39", "warmup_frac=0", "ckpt_every=1"]
    kw = {"data_dir": kjv, "tokens": 4 * STEP_TOKENS, "scratch": model_yaml, "progress": False}
    for _ in range(2):  # the rerun starts afresh: nothing non-finite was left to resume from
        with pytest.raises(TrainingDiverged, match=r"after step 1 holds NaN or Inf in params/\S+: .*no checkpoint"):
            train(out, overrides=over, **kw)
        assert _saved_steps(out) == []


def test_restore_skips_a_non_finite_checkpoint(tmp_path, caplog):
    from prunejax.train import checkpoint as ckpt

    good = {"params": {"w": jax.numpy.ones((4, 4))}, "step": jax.numpy.asarray(1)}
    bad = {"params": {"w": jax.numpy.full((4, 4), np.inf)}, "step": jax.numpy.asarray(2)}
    c = ckpt.Checkpointer(str(tmp_path))
    c.save(1, {**good, "masks": {}}, {"step": 1})
    with pytest.raises(TrainingDiverged, match="after step 2 .* params/w.*last good checkpoint is step 1"):
        c.save(2, {**bad, "masks": {}}, {"step": 2})
    assert c.steps() == [1]
    args = ckpt.ocp.args.Composite(  # what an older version wrote: a checkpoint full of Inf
        state=ckpt.ocp.args.StandardSave({**bad, "masks": {}}), data=ckpt.ocp.args.JsonSave({"step": 2})
    )
    c.manager.save(2, args=args, force=True)
    c.wait()
    with caplog.at_level(logging.WARNING):
        step, state, data = c.restore_latest(ckpt.abstract({**good, "masks": {}}))
    assert c.steps() == [1]  # the skipped one is gone, so step 2 can be written again
    c.close()
    assert step == 1 and data == {"step": 1} and np.all(np.asarray(state["params"]["w"]) == 1)
    assert "checkpoint 2" in caplog.text and "NaN/Inf in params/w" in caplog.text


def test_an_uncommitted_step_directory_is_removed_before_the_run_resumes(tmp_path, caplog):
    from prunejax.train import checkpoint as ckpt

    good = {"params": {"w": jax.numpy.ones((4, 4))}, "step": jax.numpy.asarray(1), "masks": {}}
    c = ckpt.Checkpointer(str(tmp_path))
    c.save(4, good, {"step": 4})
    c.wait()
    # what a save killed midway leaves on object storage: a step directory without Orbax's commit
    for step in ("8", "12"):
        os.makedirs(tmp_path / "checkpoints" / step / "state" / "ocdbt.process_0")
        (tmp_path / "checkpoints" / step / "state" / "ocdbt.process_0" / "manifest.ocdbt").write_bytes(b"partial")
    assert c.steps() == [4]  # Orbax does not list them
    with caplog.at_level(logging.WARNING):
        step, _, _ = c.restore_latest(ckpt.abstract(good))
    c.close()
    assert step == 4 and sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
    assert "removed uncommitted checkpoint dir(s)" in caplog.text


def test_bad_inputs_give_clear_errors(kjv, model_yaml, tmp_path):
    run = str(tmp_path / "r")
    kw = {"data_dir": kjv, "scratch": model_yaml, "progress": False}
    with pytest.raises(ConfigError, match="smaller than one step"):
        train(run, tokens=100, overrides=BASE, **kw)
    with pytest.raises(ConfigError, match="exceeds the model's max_position_embeddings"):
        train(run, tokens=10**6, overrides=[*BASE, "seq_len=128"], **kw)
    with pytest.raises(DataError, match="outside split"):
        train(run, tokens=10**4, overrides=[*BASE, "data_offset=100000000"], **kw)
    with pytest.raises(ConfigError, match="unknown train config key 'lr'"):
        train(run, tokens=10**4, overrides=[*BASE, "lr=1"], **kw)
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({**MODEL, "vocab_size": 256}))
    with pytest.raises(DataError, match="vocabulary .320. exceeds the model's vocab_size .256."):
        train(run, tokens=10**4, overrides=BASE, **{**kw, "scratch": str(small)})
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("seq_len: 32\nbatch: 8\n")
    with pytest.raises(ConfigError, match="unknown train config key.*batch"):
        config_lib.load(str(bad_cfg))
    # a mask file of another shape
    src = str(tmp_path / "sparse")
    cfg, _, masks = _sparse_model_dir(src)
    other = LlamaConfig.from_hf_dict({**MODEL, "intermediate_size": 48})
    hf.save(str(tmp_path / "other"), other, jax.device_get(state_lib.random_params(other, jax.random.key(0))))
    os.replace(os.path.join(src, hf.MASKS_FILE), str(tmp_path / "other" / hf.MASKS_FILE))
    with pytest.raises(ValueError, match="mask .* has shape"):
        train(run, tokens=10**4, overrides=BASE, init=str(tmp_path / "other"), data_dir=kjv, progress=False)
    assert not os.path.exists(run) or not os.listdir(run)  # nothing written by a rejected run


def test_train_config_refuses_non_finite_numbers(tmp_path):
    for override in ("peak_lr=nan", "peak_lr=.inf", "weight_decay=-.inf", "peak_tflops=nan", "eps=NaN"):
        key = override.split("=")[0]
        with pytest.raises(
            ConfigError, match=f"^train config defaults with overrides {override}: {key} must be a finite"
        ):
            config_lib.load(None, [override])
    path = tmp_path / "t.yaml"
    path.write_text("beta2: .nan\n")
    with pytest.raises(ConfigError, match=f"^{path}: beta2 must be a finite number, got nan"):
        config_lib.load(str(path))
    with pytest.raises(ConfigError, match="^clip_norm must be a finite number, got inf"):
        config_lib.TrainConfig(clip_norm=float("inf"))


def test_cli_errors_and_configs(kjv, model_yaml, tmp_path, capsys):
    argv = ["train", "--scratch", model_yaml, "--data", kjv, "--tokens", "1k", "--out", str(tmp_path / "r")]
    assert cli.main([*argv, "nope=1"]) == 1
    assert "unknown train config key 'nope'" in capsys.readouterr().err
    for path in glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "train", "*.yaml")):
        config_lib.load(path)


def test_distillation_from_teacher_dir(kjv, model_yaml, tmp_path):
    cfg = LlamaConfig.from_hf_dict(MODEL)
    teacher = str(tmp_path / "teacher")
    hf.save(teacher, cfg, jax.device_get(state_lib.random_params(cfg, jax.random.key(3))))
    kw = {"data_dir": kjv, "tokens": 3 * STEP_TOKENS, "scratch": model_yaml, "progress": False}
    with pytest.raises(ConfigError, match="needs both a teacher"):
        train(str(tmp_path / "x"), teacher=teacher, overrides=BASE, **kw)
    over = [*BASE, "distill_alpha=0.5", "distill_temperature=2.0"]
    train(str(tmp_path / "run"), teacher=teacher, overrides=over, **kw)
    records = [r for r in read_metrics(str(tmp_path / "run")) if "loss" in r]
    assert len(records) == 3 and all(r["loss"] != pytest.approx(r["ce"], rel=1e-3) for r in records)


def _corrupt_copy(data_dir, dest, split):
    """A copy of a DATA_DIR whose `split` holds one token id past its vocabulary (an edit, or another tool)."""
    import shutil

    shutil.copytree(data_dir, dest)
    shard = os.path.join(dest, f"{split}-00000.bin")
    raw = np.fromfile(shard, "<u2")
    raw[len(raw) // 2] = VOCAB + 7
    raw.tofile(shard)
    return str(dest)


def test_a_bad_validation_shard_is_refused_before_any_work(kjv, model_yaml, tmp_path, capsys):
    bad = _corrupt_copy(kjv, tmp_path / "bad", "validation")
    run = str(tmp_path / "run")
    argv = ["train", "--data", bad, "--scratch", model_yaml, "--tokens", str(4 * STEP_TOKENS), "--out", run]
    argv += [*BASE[:-2], "val_batches=2", "peak_tflops=1.0", "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"validation-00000.bin: token id {VOCAB + 7}" in err and "outside the vocabulary [0, 320)" in err
    assert not os.path.exists(run) or not os.listdir(run)  # no run.json, no metrics, no final/


def test_a_bad_train_shard_is_refused_and_blames_the_data(kjv, model_yaml, tmp_path):
    bad = _corrupt_copy(kjv, tmp_path / "bad", "train")
    run = str(tmp_path / "run")
    with pytest.raises(DataError, match=r"train-00000.bin: token id 327 .* corrupt or was edited"):
        train(run, data_dir=bad, tokens=4 * STEP_TOKENS, scratch=model_yaml, overrides=BASE, progress=False)
    assert not os.path.exists(run) or not os.listdir(run)


def test_a_divergence_with_no_checkpoint_says_none_was_saved(kjv, model_yaml, tmp_path):
    over = [*BASE, "peak_lr=1e30", "warmup_frac=0", "ckpt_every=0"]
    with pytest.raises(TrainingDiverged, match=r"at step \d+: training diverged; no checkpoint was saved") as err:
        train(
            str(tmp_path / "run"),
            data_dir=kjv,
            tokens=10 * STEP_TOKENS,
            scratch=model_yaml,
            overrides=over,
            progress=False,
        )
    assert "last good checkpoint" not in str(err.value)
    assert _saved_steps(str(tmp_path / "run")) == []


def test_a_run_resumes_across_logging_only_keys_and_not_across_others(tmp_path):
    from prunejax.train import run as run_lib

    tcfg = config_lib.TrainConfig(tensorboard=False)
    out = str(tmp_path / "r")
    assert run_lib.open_run_dir(out, run_lib._resolved(tcfg, model="m")) is False  # a new RUN_DIR
    assert run_lib.open_run_dir(out, run_lib._resolved(tcfg.replace(tensorboard=True), model="m")) is True
    with pytest.raises(ConfigError, match="differs in: train"):
        run_lib.open_run_dir(out, run_lib._resolved(tcfg.replace(peak_lr=1e-3), model="m"))
    with pytest.raises(ConfigError, match="differs in: model"):
        run_lib.open_run_dir(out, run_lib._resolved(tcfg, model="other"))


def test_a_scanning_run_trains_stacked_layers_and_checkpoints_them_per_layer(kjv, model_yaml, tmp_path):
    """`attention: xla` runs the layers as one scan, so the train state holds them stacked (one array per
    weight kind and moment); its checkpoints and final MODEL_DIR hold them per layer, as every other
    run's do, and a run resumed from them continues exactly."""
    over = [*BASE, "attention=xla", "ckpt_every=2"]
    kw = {"data_dir": kjv, "tokens": 4 * STEP_TOKENS, "scratch": model_yaml, "overrides": over, "progress": False}
    cfg = LlamaConfig.from_file(model_yaml)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tp"))
    assert state_lib.scans_layers(cfg, None, "xla", mesh) and not state_lib.scans_layers(cfg, None, "auto", mesh)
    full = str(tmp_path / "full")
    train(full, **kw)
    cut = str(tmp_path / "cut")
    assert train(cut, stop_after=2, **kw)["status"] == "stopped"
    meta = json.load(open(os.path.join(cut, "checkpoints", "2", "state", "_METADATA")))
    names = {k for k in meta["tree_metadata"] if "layers" in k}
    assert names and all("'layers', '" in k and any(f"'layers', '{i}'" in k for i in range(2)) for k in names)
    assert any("'opt_state'" in k and "'layers', '1', 'mlp', 'up_proj'" in k for k in names)  # moments too
    s = train(cut, **kw)
    assert s["start_step"] == 2 and s["status"] == "done"
    assert _losses(cut) == _losses(full)
    _, a = hf.load(os.path.join(full, "final"))
    _, b = hf.load(os.path.join(cut, "final"))
    assert sorted(a["layers"]) == ["0", "1"]
    for (path, x), (_, y) in zip(tree.leaf_paths(a), tree.leaf_paths(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg="/".join(path))
