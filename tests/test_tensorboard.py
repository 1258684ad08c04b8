"""TensorBoard event files beside metrics.jsonl: read back with TensorBoard's own reader, they hold the same
scalars at the same steps (to float32, as TensorBoard stores them), for a local RUN_DIR, its resume, and a
gs:// RUN_DIR (against the local GCS emulator of tests/gcs_emulator.py)."""

import os
import shutil

import gcs_emulator
import jax
import numpy as np
import pytest
import yaml
from conftest import TRAIN_HF
from multiproc import launch
from tensorboard.backend.event_processing import event_accumulator

from prunejax import storage
from prunejax.data.store import write_data_dir
from prunejax.train import metrics as metrics_lib
from prunejax.train.metrics import MetricsWriter, read_metrics
from prunejax.train.run import train

BUCKET = "prunejax-tensorboard"
MODEL = {"vocab_size": 256, **TRAIN_HF}
# 6 steps of 8 x 32 tokens; a checkpoint (and a new event file) every 2 steps, validation at 3 and 6
STEPS = 6
TOKENS = STEPS * 8 * 32
OVERRIDES = ["seq_len=32", "global_batch=8", "peak_lr=3e-3", "peak_tflops=1.0"]
OVERRIDES += ["val_batches=1", "val_every=3", "ckpt_every=2"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    chunks = {"train": [rng.integers(1, 256, 8_000)], "validation": [rng.integers(1, 256, 2_000)]}
    (root / "model.yaml").write_text(yaml.safe_dump(MODEL))
    data = write_data_dir(str(root / "data"), chunks, vocab_size=256, eos_id=0)
    return {"data": data, "model": str(root / "model.yaml")}


@pytest.fixture
def gcs(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the staging dirs, here not in ~/.cache
    with gcs_emulator.serving(BUCKET):
        yield f"gs://{BUCKET}"


def events(tb_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of `tb_dir`, as TensorBoard's reader serves them: {tag: [(step, value)]}."""
    acc = event_accumulator.EventAccumulator(tb_dir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return {tag: points for tag, points in scalars.items() if points}  # a tag whose events were all dropped


def remote_events(run_dir: str, local: str) -> dict[str, list[tuple[int, float]]]:
    """`events` of a remote RUN_DIR's tensorboard/, its files downloaded through prunejax.storage."""
    os.makedirs(local)
    for name in storage.list_names(storage.join(run_dir, "tensorboard")):
        with open(os.path.join(local, name), "wb") as f:
            f.write(storage.read_file(storage.join(run_dir, "tensorboard", name)))
    return events(local)


def expected(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What the event files should hold for these metrics.jsonl records: each number but the step, as float32."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for k, v in r.items():
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                scalars.setdefault(k, []).append((r["step"], float(np.float32(v))))
    return scalars


def remote_files(run_dir: str) -> dict[str, bytes]:
    tb = storage.join(run_dir, "tensorboard")
    return {name: storage.read_file(storage.join(tb, name)) for name in storage.list_names(tb)}


def test_a_local_run_and_its_resume_log_metrics_jsonl_to_tensorboard(inputs, tmp_path):
    run = str(tmp_path / "run")
    kw = {"data_dir": inputs["data"], "tokens": TOKENS, "scratch": inputs["model"], "overrides": OVERRIDES}
    train(run, **kw, progress=False)
    tb = os.path.join(run, "tensorboard")
    records = read_metrics(run)
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "tokens", "val_loss"} <= set(expected(records))
    assert [s for s, _ in expected(records)["loss"]] == list(range(1, STEPS + 1))
    assert [s for s, _ in expected(records)["val_loss"]] == [3, 6]
    assert events(tb) == expected(records)
    first = {name: open(os.path.join(tb, name), "rb").read() for name in os.listdir(tb)}
    assert all(name.startswith("events.out.tfevents.") for name in first)

    # resume from step 4: steps 5 and 6 run again (their tokens/s differ), metrics.jsonl drops its first
    # records of them, and TensorBoard's reader drops the first run's events of them at the restart marker
    shutil.rmtree(os.path.join(run, "checkpoints", "6"))
    assert train(run, **kw, progress=False)["start_step"] == 4
    again = read_metrics(run)
    assert [r["step"] for r in again if "loss" in r] == list(range(1, STEPS + 1))
    assert again[:4] == records[:4]  # steps 1-4 are the first run's records
    after = {name: open(os.path.join(tb, name), "rb").read() for name in os.listdir(tb)}
    assert {n: after[n] for n in first} == first and len(after) > len(first)  # new files; the old untouched
    assert events(tb) == expected(again)


def test_tensorboard_false_writes_no_event_files_and_other_processes_write_nothing(tmp_path, monkeypatch):
    (tmp_path / "off").mkdir()  # RUN_DIRs exist before their writer (train's open_run_dir makes them)
    off = MetricsWriter(str(tmp_path / "off"), tensorboard=False)
    off.write({"step": 1, "loss": 2.0})
    off.close()
    assert os.listdir(tmp_path / "off") == ["metrics.jsonl"]
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    (tmp_path / "other").mkdir()
    other = MetricsWriter(str(tmp_path / "other"))
    other.truncate_after(0)
    other.write({"step": 1, "loss": 2.0})
    other.close()
    assert os.listdir(tmp_path / "other") == []


def test_non_finite_and_non_numeric_values_are_not_logged(tmp_path):
    w = MetricsWriter(str(tmp_path))
    w.write({"step": 1, "loss": 2.5, "mfu": None, "tokens_per_s": float("inf"), "note": "x", "flag": True})
    w.close()
    assert events(str(tmp_path / "tensorboard")) == {"loss": [(1, 2.5)]}


def test_a_gs_run_dir_uploads_each_event_file_once_and_a_resume_keeps_the_earlier_ones(gcs, tmp_path):
    run = f"{gcs}/run"
    w = MetricsWriter(run)
    staged = os.path.join(storage.staging_dir(run), "tensorboard")
    w.truncate_after(0)
    w.write({"step": 1, "tokens": 256, "loss": 1.25, "lr": 1e-3, "tokens_per_s": None})
    w.write({"step": 2, "tokens": 512, "loss": 1.0 / 3.0, "lr": 2e-3})
    w.sync()
    assert len(remote_files(run)) == 1 and os.listdir(staged) == []  # uploaded, and not again at the next sync
    w.write({"step": 3, "tokens": 768, "loss": 0.5, "val_loss": 0.75})
    w.close()
    first = remote_files(run)
    assert len(first) == 2 and not os.path.exists(storage.staging_dir(run))
    assert remote_events(run, str(tmp_path / "a")) == expected(read_metrics(run))

    # a killed writer's staged, never uploaded events are not the record: a rerun drops them
    os.makedirs(staged)
    with open(os.path.join(staged, "events.out.tfevents.1.stale"), "wb") as f:
        f.write(b"not uploaded")
    w = MetricsWriter(run)
    w.truncate_after(1)  # resumed from step 1: steps 2 and 3 again, with other values
    w.write({"step": 2, "tokens": 512, "loss": 2.0})
    w.write({"step": 3, "tokens": 768, "loss": 3.0})
    w.close()
    after = remote_files(run)
    assert {n: after[n] for n in first} == first and len(after) == 3
    records = read_metrics(run)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.25), (2, 2.0), (3, 3.0)]
    got = remote_events(run, str(tmp_path / "b"))
    assert got == expected(records) and "val_loss" not in got  # the first run's step-3 validation is dropped too


def test_train_into_a_gs_run_dir_uploads_the_events_of_metrics_jsonl(gcs, inputs, tmp_path):
    run = f"{gcs}/train"
    argv = ["train", "--scratch", inputs["model"], "--data", inputs["data"], "--tokens", str(TOKENS)]
    launch([*argv, "--out", run, "--no-progress", *OVERRIDES], processes=2, devices=4).check()
    records = read_metrics(run)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
    assert remote_events(run, str(tmp_path / "events")) == expected(records)  # one writer: no step twice


def test_a_missing_tensorboardx_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboardx(name, *args, **kwargs):
        if name == "tensorboardX":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
    with pytest.raises(ValueError, match="tensorboardX package.*tensorboard=false"):
        metrics_lib.MetricsWriter(str(tmp_path))
