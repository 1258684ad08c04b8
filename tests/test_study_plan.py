"""A study stage is keyed by everything it reads: an imported parent and a given DATA_DIR by their content
(replaced, or edited in place at equal size and mtime, they are never reported cached), and a grid cell by a
ratio its method can realize (a depth ratio a 2-layer parent cannot reach is refused before any work)."""

import os
import re
import struct

import jax
import numpy as np
import pytest

from prunejax import hf
from prunejax.config import TINY, ConfigError
from prunejax.convert import convert
from prunejax.data.store import DataError, write_data_dir
from prunejax.evaluate.perplexity import data_dir_nll
from prunejax.model import init_params
from prunejax.study import config as study_config
from prunejax.study import plan, report
from prunejax.study.noise import fmt_value
from prunejax.study.runner import Runner, StudyError, _marker_path, write_json
from prunejax.study.stages import STAGES

SEQ = 32
CFG = TINY.replace(num_hidden_layers=2)  # a depth method can only remove one layer: ratio 0.5


def _study(parent: str, data: str, **change) -> study_config.StudyConfig:
    return study_config.from_dict(
        {
            "name": "imported",
            "data": {"data_dir": data},
            "parent": {"import": parent},
            "methods": ["magnitude"],
            "ratios": [0.5],
            "retrain_budgets": [512],
            "scratch_shapes": [],
            "train_config": "configs/train/tiny.yaml",
            "train_overrides": [f"seq_len={SEQ}", "global_batch=8", "val_every=0", "ckpt_every=0", "val_batches=0"],
            "calibration": {"samples": 4, "seq_len": SEQ, "batch_size": 4},
            "eval": {"seq_len": SEQ, "max_tokens": 512, "batch_size": 4},
            **change,
        }
    )


def _model_dir(path, seed: int, scale: float = 1.0) -> str:
    params = jax.tree.map(lambda x: x * scale, init_params(CFG, jax.random.key(seed)))
    return hf.save(str(path), CFG, jax.device_get(params))


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    data = write_data_dir(
        str(tmp_path / "data"),
        {"train": [rng.integers(1, CFG.vocab_size, 4000)], "validation": [rng.integers(1, CFG.vocab_size, 1000)]},
        vocab_size=CFG.vocab_size,
        eos_id=0,
    )
    return _model_dir(tmp_path / "parent", seed=0), data


def _parent_loss(out: str) -> float:
    _, rows = report.load_results(out)
    (row,) = [r for r in rows if r["role"] == "parent"]
    return row["val_loss"]


def test_a_replaced_imported_parent_is_refused_then_rerun_and_reported(inputs, tmp_path):
    parent, data = inputs
    study, out = _study(parent, data), str(tmp_path / "study")
    log: list[str] = []
    assert Runner(study, out).run(log=log.append) == 0, log[-1]
    report.write_report(out)
    old = _parent_loss(out)
    # `convert NEW --out DIR --overwrite`: another model at the same path
    convert(_model_dir(tmp_path / "other", seed=1, scale=4.0), parent, overwrite=True)
    with pytest.raises(StudyError) as e:
        Runner(study, out).run(log=lambda s: None)
    msg = str(e.value)
    assert f"{parent} is not what stage parent read" in msg and "--rerun-changed" in msg
    for stage in ("parent", "eval/parent", "prune/magnitude/r0.5/s0", "retrain/magnitude/r0.5/s0/R512"):
        assert f"\n  {stage}\n" in msg + "\n", stage
    log = []
    assert Runner(study, out).run(rerun_changed=True, log=log.append) == 0, log[-1]
    assert not any("(cached)" in line for line in log if "] data:" not in line)  # all but the DATA_DIR redone
    paths = report.write_report(out)
    cfg, params = hf.load(parent)
    expected = data_dir_nll(cfg, params, data, SEQ, max_tokens=512, batch_size=4)["nll"]
    assert _parent_loss(out) == pytest.approx(expected, abs=1e-4) and abs(expected - old) > 0.1
    assert f"validation loss {fmt_value(expected)} on this study's held-out data" in open(paths["markdown"]).read()


def _edit_in_place(path: str, offset: int, data: bytes) -> None:
    """Overwrite bytes at `offset` (negative: from the end), keeping the size and the mtime."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.path.getsize(path) == st.st_size


def test_inputs_edited_in_place_change_the_keys_of_what_reads_them(inputs):
    parent, data = inputs
    base = plan.hashes(plan.build(_study(parent, data)))
    _edit_in_place(os.path.join(parent, "model.safetensors"), -256, struct.pack("<f", 0.5) * 16)
    edited = plan.hashes(plan.build(_study(parent, data)))
    assert edited["data"] == base["data"]
    assert all(edited[k] != base[k] for k in base if k != "data"), "a stage downstream of the parent kept its key"
    _edit_in_place(os.path.join(data, "validation-00000.bin"), 20, struct.pack("<H", 7))  # a valid id
    assert all(v != edited[k] for k, v in plan.hashes(plan.build(_study(parent, data))).items())


def test_an_edited_validation_shard_is_named_when_the_study_is_rerun(inputs, tmp_path):
    parent, data = inputs
    study, out = _study(parent, data), str(tmp_path / "study")
    runner = Runner(study, out)
    for stage in runner.stages[:3]:  # data, parent, its evaluation, run and marked done as the runner does
        STAGES[stage.kind](runner, stage)
        write_json(
            _marker_path(runner.dir, stage.id),
            {"hash": runner.hashes[stage.id], "status": "done", "reads": stage.reads},
        )
    _edit_in_place(os.path.join(data, "validation-00000.bin"), 20, struct.pack("<H", 7))  # still a valid id
    listed = re.escape("these 3 stage(s) would be invalidated:\n  data\n  parent\n  eval/parent\n")
    with pytest.raises(StudyError, match=f"{re.escape(data)} is not what stage data read .*\n{listed}"):
        Runner(study, out).run(log=lambda s: None)


def test_a_study_refuses_a_data_dir_with_token_ids_past_its_vocabulary(inputs, tmp_path):
    parent, data = inputs
    _edit_in_place(os.path.join(data, "validation-00000.bin"), 40, struct.pack("<H", CFG.vocab_size + 3))
    runner = Runner(_study(parent, data), str(tmp_path / "study"))
    log: list[str] = []
    assert runner.run(log=log.append) == 1
    assert "data: failed" in log[0] and f"token id {CFG.vocab_size + 3} at token 20 of the shard" in log[0]
    assert "failed: data;" in log[-1] and not os.path.exists(os.path.join(runner.dir, "parent"))
    with pytest.raises(DataError, match="validation-00000.bin: token id"):
        data_dir_nll(*hf.load(parent), data, SEQ)  # `eval` refuses it by the same check


@pytest.mark.parametrize(
    "method, ratio, why",
    [
        ("minitron-depth", 0.95, "1 of 2 layers removed; .*prunes 0.5, more than 0.05 away"),
        ("shortgpt", 0.9, "prunes 0.5, more than 0.05 away"),
        ("minitron-depth", 0.2, "removes no layer of a 2-layer model"),
        ("minitron-width", 0.99, "comes within 0.05 of ratio 0.99"),
        ("sheared", 0.99, "comes within 0.05 of ratio 0.99"),
    ],
)
def test_a_ratio_the_parent_cannot_realize_is_refused_before_any_work(inputs, tmp_path, method, ratio, why):
    # a 2-layer parent can only lose one layer (0.5): 0.95 would run, realize 0.5 and be labelled 0.95
    parent, data = inputs
    extra = {"sheared_prune_tokens": 512} if method == "sheared" else {}
    study = _study(parent, data, methods=[{"name": method, "ratios": [ratio]}], **extra)
    with pytest.raises(ConfigError, match=f"{method} cannot reach ratio {ratio} on this parent: .*{why}"):
        Runner(study, str(tmp_path / "s"))
    assert not os.path.exists(tmp_path / "s")
