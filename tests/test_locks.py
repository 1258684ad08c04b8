"""One writer per directory (local flock, gs:// leased object) and storage that stops answering (a deadline).

The gs:// cases run against their own emulator (tests/gcs_emulator.py), which one test freezes with SIGSTOP.
"""

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import types

import fsspec
import gcs_emulator
import jax
import numpy as np
import pytest
from multiproc import CFG, launch, start, wait

from prunejax import hf, locks, storage
from prunejax.data.store import write_data_dir
from prunejax.model import init_params
from prunejax.train import checkpoint

BUCKET = "prunejax-locks"
HOLD = """import sys, time
from prunejax import locks
with locks.hold(sys.argv[1], "holder"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture()
def gcs():
    with gcs_emulator.serving(BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    cfg = CFG.replace(num_hidden_layers=1)
    model = hf.save(str(root / "model"), cfg, init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    chunks = {"train": [rng.integers(1, 256, 8_000)], "validation": [rng.integers(1, 256, 2_000)]}
    return {"model": model, "data": write_data_dir(str(root / "data"), chunks, vocab_size=256, eos_id=0)}


def holder(directory: str, **env: str) -> subprocess.Popen:
    """A process that holds `directory`'s lock for two minutes, once it has said so."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, directory], stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def train_argv(inputs, out: str, steps: int = 8) -> list[str]:
    argv = ["train", "--scratch", inputs["model"], "--data", inputs["data"], "--tokens", f"{steps * 4 * 16}"]
    return [*argv, "--no-progress", "seq_len=16", "global_batch=4", "val_batches=1", "ckpt_every=4", "--out", out]


def test_a_second_local_writer_is_refused_and_a_crashed_holders_lock_is_taken(tmp_path, inputs):
    run = str(tmp_path / "run")
    proc = holder(run)
    with pytest.raises(locks.LockError, match=rf"{run} is being written by holder \(host .*, pid {proc.pid}, since"):
        with locks.hold(run):
            pass
    t0 = time.time()
    out = launch(train_argv(inputs, run), processes=1, devices=1)
    assert out.codes == [1] and f"pid {proc.pid}" in out.outputs[0] and "Traceback" not in out.outputs[0], out.outputs
    assert time.time() - t0 < 60 and not os.path.exists(run)  # refused before any work
    proc.kill()  # a crash: the kernel drops the flock, the rerun takes it at once
    proc.wait()
    launch(train_argv(inputs, run), processes=1, devices=1).check()
    assert not os.path.exists(locks.lock_path(run))  # released and removed
    with locks.hold(run), locks.hold(run):  # nested holds in one process are one writer
        pass


def test_a_second_gs_writer_is_refused_until_a_crashed_holders_lease_expires(gcs, inputs, tmp_path, monkeypatch):
    monkeypatch.setenv(locks.LEASE_ENV, "3")
    run = f"gs://{BUCKET}/run"
    proc = holder(run)
    time.sleep(2)  # the holder renews its 3-second lease
    with pytest.raises(locks.LockError, match=rf"{run} is being written by holder \(host .*, pid {proc.pid},"):
        with locks.hold(run):
            pass
    cache = str(tmp_path / "cache")
    out = launch(train_argv(inputs, run), processes=1, devices=1, XDG_CACHE_HOME=cache)
    assert out.codes == [1] and f"pid {proc.pid}" in out.outputs[0] and "Traceback" not in out.outputs[0], out.outputs
    assert not storage.exists(f"{run}/run.json")
    proc.kill()
    proc.wait()
    with pytest.raises(locks.LockError, match="its lease runs"):  # a dead holder's lease still counts ...
        with locks.hold(run):
            pass
    time.sleep(3.5)  # ... until it expires: then the rerun takes it over and finishes
    launch(train_argv(inputs, run), processes=1, devices=1, XDG_CACHE_HOME=cache).check()
    assert storage.committed(f"{run}/final") and not storage.exists(locks.lock_path(run))
    steps = [json.loads(line)["step"] for line in storage.read_file(f"{run}/metrics.jsonl").decode().splitlines()]
    assert steps == sorted(steps)
    staging = os.path.join(cache, "prunejax", "staging")
    assert not os.path.exists(staging) or os.listdir(staging) == []  # a finished gs:// run leaves no staging


def test_two_identical_gs_trains_started_together_one_runs_one_is_refused(gcs, inputs):
    run = f"gs://{BUCKET}/twins"
    procs = start(train_argv(inputs, run), 1, 1) + start(train_argv(inputs, run), 1, 1)
    out = wait(procs)
    assert sorted(out.codes) == [0, 1], out.outputs
    refused = out.outputs[out.codes.index(1)]
    assert "is being written by" in refused and "Traceback" not in refused, refused
    steps = [json.loads(line)["step"] for line in storage.read_file(f"{run}/metrics.jsonl").decode().splitlines()]
    assert steps == sorted(steps) and storage.committed(f"{run}/final")


def test_a_frozen_storage_ends_train_with_one_message_within_its_deadline(gcs, inputs):
    """SIGSTOP the emulator once a checkpoint is on gs: the run ends on PRUNEJAX_STORAGE_TIMEOUT (3 s here;
    every call's deadline plus gcsfs's bounded retries), with one message naming the bucket."""
    run = f"gs://{BUCKET}/frozen"
    (proc,) = start(train_argv(inputs, run, steps=4000), 1, 1, PRUNEJAX_STORAGE_TIMEOUT="3")
    deadline = time.time() + 120
    while not storage.exists(f"{run}/metrics.jsonl"):  # written after the first checkpoint
        assert time.time() < deadline and proc.poll() is None, "no checkpoint reached gs"
        time.sleep(0.1)
    os.kill(gcs.pid, signal.SIGSTOP)
    t0 = time.time()
    out = wait([proc], timeout=300)
    assert out.codes == [1] and time.time() - t0 < 120, (time.time() - t0, out.outputs)
    # one prunejax message, and nothing after it (Orbax's async save thread, failing on the same dead store, is
    # silenced once the verb has reported)
    lines = out.outputs[0].splitlines()
    errors = [line for line in lines if line.startswith("prunejax train: error:")]
    assert len(errors) == 1 and f"bucket '{BUCKET}'" in errors[0] and "did not answer" in errors[0], out.outputs
    assert lines[-1] == errors[0] and "Traceback" not in out.outputs[0], out.outputs


def test_a_frozen_store_fails_the_gcsfs_calls_of_other_libraries_within_the_deadline(gcs, monkeypatch):
    """Orbax writes its JSON through a gcsfs file system that etils' epath opens with no deadline; gcsfs alone
    retries a request that gets no answer for over 30 s. prunejax registers gcsfs with the storage deadline
    on every request: such a write ends in about that deadline with a StorageError naming the bucket."""
    monkeypatch.setenv(storage.TIMEOUT_ENV, "2")
    storage.exists(f"gs://{BUCKET}/anything")  # prunejax's first gs:// call registers it
    fs = fsspec.filesystem("gs", finalize_on_close=True)  # as epath opens it
    fs.pipe(f"{BUCKET}/before.json", b"{}")
    os.kill(gcs.pid, signal.SIGSTOP)
    t0 = time.time()
    with pytest.raises(storage.StorageError, match=f"bucket '{BUCKET}' did not answer .* within 2 s"):
        with fs.open(f"{BUCKET}/after.json", "wb") as f:
            f.write(b"{}")
    assert time.time() - t0 < 10


def test_the_request_bodies_gcsfs_sends_are_measured_for_their_deadline():
    """A second per MB sent is added to a request's deadline; gcsfs sends bytes, memoryviews (of any item
    size), BytesIO, str or nothing."""
    assert storage._nbytes(None) == 0 and storage._nbytes(b"abc") == 3 and storage._nbytes("\u00e9") == 2
    assert storage._nbytes(io.BytesIO(b"12345")) == 5 and storage._nbytes(memoryview(np.zeros(4, np.float32))) == 16
    assert storage._nbytes(iter([b"x"])) == 0  # a stream of unknown length: the base deadline


def test_only_tensorstore_callbacks_into_a_finished_loop_are_dropped_as_unraisable():
    """The noise the frozen-store run printed: tensorstore (C++, no Python caller) calling
    `call_soon_threadsafe` on Orbax's closed save loop, reported as unraisable. The same error raised under a
    Python caller, or any other exception, still reaches the previous hook."""
    seen = []
    hook = checkpoint._drop_late_loop_callbacks(lambda u: seen.append(u.exc_value))
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        closed = e
    from_c = closed.__traceback__.tb_next  # as tensorstore's C++ reports it: the first frame is asyncio's
    assert from_c.tb_frame.f_code.co_name == "call_soon_threadsafe"

    def unraisable(exc, tb):
        return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=tb, err_msg=None, object=None)

    hook(unraisable(closed, from_c))
    assert seen == []
    hook(unraisable(closed, closed.__traceback__))  # raised under a Python caller: a real bug, shown
    other = ValueError("Event loop is closed")
    hook(unraisable(other, from_c))
    assert seen == [closed, other]


def test_a_bucket_name_gcs_rejects_fails_the_up_front_check(inputs):
    with pytest.raises(storage.StorageError, match="'rt' is not a valid bucket name"):
        storage.check_bucket("gs://rt/run")
    for bad in ("gs://Upper/x", "gs://-dash/x", f"gs://{'a' * 64}/x", "gs://a..b/x"):
        with pytest.raises(storage.StorageError, match="is not a valid bucket name"):
            storage.check_bucket(bad)
    out = launch(train_argv(inputs, "gs://rt/run"), processes=1, devices=1)
    assert out.codes == [1] and "'rt' is not a valid bucket name" in out.outputs[0] and len(out.outputs[0]) < 2000
