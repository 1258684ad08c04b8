"""The one-writer rules of prunejax.distributed, seen from each side, with the coordination service's
key-value store played by a dict (tests/test_multiprocess.py runs the real thing)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from prunejax import distributed, storage
from prunejax.evaluate.results import write_results


class KV:
    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values = dict(values or {})
        self.asked: list[str] = []

    def key_value_set(self, key: str, value: str) -> None:
        self.values[key] = value

    def blocking_key_value_get(self, key: str, timeout_ms: int) -> str:
        self.asked.append(key)
        return self.values[key]


@pytest.fixture
def as_process(monkeypatch):
    """as_process(i, kv): from now on this test runs as process i of 2, over `kv`."""
    monkeypatch.setattr(distributed, "_counter", {})

    def become(i: int, kv: KV) -> None:
        monkeypatch.setattr(distributed, "process_count", lambda: 2)
        monkeypatch.setattr(distributed, "process_index", lambda: i)
        monkeypatch.setattr(distributed, "_client", lambda: kv)

    return become


def test_decided_is_process_0s_answer_everywhere(as_process):
    kv = KV()
    as_process(0, kv)
    assert distributed.decided("stage a done", lambda: {"status": "done"}) == {"status": "done"}
    (key,) = kv.values
    distributed._counter.clear()
    as_process(1, kv)

    def looks_again():
        raise AssertionError("process 1 must not look for itself")

    assert distributed.decided("stage a done", looks_again) == {"status": "done"}
    assert kv.asked == [key]


def test_decided_none_and_errors_cross_over(as_process):
    kv = KV()
    as_process(0, kv)
    assert distributed.decided("twin", lambda: None) is None
    with pytest.raises(FileNotFoundError):
        distributed.decided("broken", lambda: open("/nonexistent/prunejax"))
    distributed._counter.clear()
    as_process(1, kv)
    assert distributed.decided("twin", lambda: "other") is None
    with pytest.raises(distributed.LaunchError, match="process 0 failed deciding broken: FileNotFoundError"):
        distributed.decided("broken", lambda: None)


def test_a_late_process_waits_for_the_writer_instead_of_finding_its_file(tmp_path, as_process):
    """Process 1 may reach write_results after process 0 wrote results.json: it must not call that file
    a leftover (CI once failed this way, on 2 processes, with 'results.json exists')."""
    out = str(tmp_path / "results.json")
    write_results(out, {"perplexity": 3.0})  # what process 0 has just written
    kv = KV({f"prunejax/write/results {out}/1": "ok"})
    as_process(1, kv)
    assert write_results(out, {"perplexity": 3.0}) == out
    assert kv.asked == [f"prunejax/write/results {out}/1"]
    assert json.loads(open(out).read()) == {"perplexity": 3.0}


def test_only_process_0_judges_whether_out_is_taken(tmp_path, as_process):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")
    kv = KV()
    as_process(0, kv)
    with pytest.raises(FileExistsError, match="model exists and is not empty"):
        storage.refuse_existing(str(out), overwrite=False)
    storage.refuse_existing(str(out), overwrite=True)
    distributed._counter.clear()
    as_process(1, kv)
    with pytest.raises(distributed.LaunchError, match="exists and is not empty"):
        storage.refuse_existing(str(out), overwrite=False)
    storage.refuse_existing(str(out), overwrite=False)  # process 0 said ok to the 2nd call: so does process 1


class Service:
    """The coordination service's live-task query as each case answers it."""

    def __init__(self, live: list[int] | None = None, blocks: bool = False, gone: bool = False) -> None:
        self.live, self.blocks, self.gone = live, blocks, gone

    def get_live_nodes(self, tasks: list[int]) -> list[int]:
        if self.gone:
            raise RuntimeError("UNAVAILABLE: failed to connect")
        if self.blocks:  # the real query waits, like a barrier, for every live task to ask
            threading.Event().wait()
        return self.live


def test_dead_peers_names_the_dead_and_never_waits_past_its_deadline(as_process, monkeypatch):
    monkeypatch.setattr(distributed, "_joined", {"heartbeat_timeout": 1})
    as_process(0, Service(live=[0]))
    assert distributed.dead_peers() == "process(es) 1"
    as_process(1, Service(gone=True))
    assert distributed.dead_peers() == "process(es) 0 (the coordinator)"
    # A peer stuck in a collective with this process never asks, so the query would block for good: the
    # answer comes at the deadline (2 x heartbeat + 10 s) instead. This hung a failed 2-process prune.
    as_process(1, Service(blocks=True))
    t0 = time.monotonic()
    assert distributed.dead_peers() == "no peer answered (they may be alive and waiting for this one)"
    assert 11 < time.monotonic() - t0 < 15


# An uncaught C++ exception on a thread that is not Python's (gloo's transport thread, in the runtime).
THROW_ON_A_RUNTIME_THREAD = """
import ctypes, threading
from prunejax import distributed
assert distributed.name_dead_peers_on_terminate() and distributed.name_dead_peers_on_terminate()  # idempotent
throw = ctypes.CDLL("libstdc++.so.6")._ZSt21__throw_runtime_errorPKc
threading.Thread(target=throw, args=(b"Received data size doesn't match expected size.",)).start()
threading.Event().wait(60)
"""


def test_an_uncaught_cxx_exception_names_the_dead_peers_then_crashes_as_before():
    import signal
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", THROW_ON_A_RUNTIME_THREAD], capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGABRT, r.stderr
    ours = (
        "prunejax [process 0]: error: the runtime ended in an uncaught C++ exception (std::runtime_error) "
        "on one of its threads; stopped: no peer (all still alive)\n"
    )
    assert r.stderr.startswith(ours), r.stderr
    # then libstdc++'s own handler, as without prunejax: the exception and its message
    assert "terminate called after throwing an instance of 'std::runtime_error'\n" in r.stderr
    assert "what():  Received data size doesn't match expected size." in r.stderr


def test_input_digest_tells_apart_what_relative_paths_name(tmp_path, monkeypatch):
    for host, weights in (("a", b"1" * 100), ("b", b"2" * 100), ("c", b"1" * 100)):
        (tmp_path / host / "models" / "m").mkdir(parents=True)
        (tmp_path / host / "models" / "m" / "model.safetensors").write_bytes(weights)
        (tmp_path / host / "run").mkdir()
        (tmp_path / host / "run" / f"only-on-{host}").write_text(host)  # --out is not an input
    argv = ["--model", "models/m", "--out", "run", "--ratio", "0.5", "gs://bucket/data"]
    digests = {}
    for host in "abc":
        monkeypatch.chdir(tmp_path / host)
        digests[host] = distributed.input_digest(argv)
    assert digests["a"] == digests["c"] != digests["b"]
    monkeypatch.chdir(tmp_path / "a")
    (tmp_path / "a" / "models" / "m" / "extra.json").write_text("{}")
    assert distributed.input_digest(argv) != digests["a"]  # a file more is a different model
