"""One launch contract for every verb: join JAX's multi-controller runtime once, then one writer per file.

A pod slice runs one process per host, each the same `prunejax VERB ...` command. A process joins
the runtime when launched with `PRUNEJAX_DISTRIBUTED=1` (JAX detects the cluster: TPU VMs, SLURM,
Open MPI) or with `--coordinator HOST:PORT --num-processes N --process-id I` (GPU clusters, tests).
`prunejax.cli` joins before the verb runs, so no verb does any JAX work first, and a study joins
once for all of its stages (`join` is idempotent).

After joining, every process computes on the global mesh; exactly one process (`is_writer`)
writes each shared file and the others wait for it in `one_writer`, which hands them the writer's
error if it fails. `agree` checks that every process runs the same thing (argv, code, configs)
before work starts. A process that dies stops sending heartbeats; JAX's coordination service
then ends every other process with a message naming the dead task, after `--heartbeat-timeout`
seconds at most. A process that fails with an error leaves through `abort` (no clean shutdown,
which would wait for the peers) so the same bound holds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ENV = "PRUNEJAX_DISTRIBUTED"
DEFAULT_HEARTBEAT_S = 100  # JAX's default: a dead peer is noticed within this many seconds
WAIT_S = 7 * 24 * 3600  # a writer may take long (a data build); a dead writer is caught by the heartbeat

_joined: dict[str, Any] | None = None
_counter: dict[str, int] = {}
_writing = False  # inside one_writer on the writer: nested writes run directly (the others never see them)


class LaunchError(ValueError):
    """A launch that cannot join (bad flags, no cluster) or processes that disagree."""


def add_launch_args(parser: argparse.ArgumentParser) -> None:
    """The multi-process flags, in the same words on every verb."""
    g = parser.add_argument_group(
        "multi-process launch", f"one process per host; or set {ENV}=1 to let JAX detect the cluster"
    )
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordination service")
    g.add_argument("--num-processes", type=int, metavar="N", help="number of processes in the run")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 .. N-1")
    g.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=DEFAULT_HEARTBEAT_S,
        metavar="S",
        help=f"seconds after which a silent peer counts as dead and all stop (default {DEFAULT_HEARTBEAT_S})",
    )


def launch_args(argv: list[str]) -> argparse.Namespace:
    """The launch flags out of a verb's argv (the verb's own parser accepts them too)."""
    p = argparse.ArgumentParser(add_help=False)
    add_launch_args(p)
    return p.parse_known_args(argv)[0]


def join(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_S,
    auto: bool | None = None,
) -> bool:
    """Join `jax.distributed` when this is one of several processes; True if joined (now or before).

    `auto` (default: the PRUNEJAX_DISTRIBUTED variable) lets JAX detect the cluster. Without flags
    and without `auto` this is a single-process run and nothing happens."""
    global _joined
    auto = os.environ.get(ENV) == "1" if auto is None else auto
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if not any(given) and not auto:
        return _joined is not None
    if any(given) and not all(given):
        raise LaunchError("--coordinator, --num-processes and --process-id go together: give all three")
    if heartbeat_timeout < 1:
        raise LaunchError(f"--heartbeat-timeout must be a positive number of seconds, got {heartbeat_timeout}")
    if all(given):
        if num_processes < 1:
            raise LaunchError(f"--num-processes must be positive, got {num_processes}")
        if not 0 <= process_id < num_processes:
            raise LaunchError(f"--process-id must be in 0..{num_processes - 1}, got {process_id}")
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise LaunchError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    request = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if _joined is not None:
        if all(given) and request != {k: _joined[k] for k in request}:
            raise LaunchError(f"already joined as {_joined}; cannot join again as {request}")
        return True
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise LaunchError("JAX was used before joining the multi-process runtime: join first (prunejax.cli does)")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            heartbeat_timeout_seconds=heartbeat_timeout,
        )
    except (ValueError, RuntimeError) as e:
        if not all(given):
            raise LaunchError(
                f"{ENV}=1 but JAX found no cluster to join ({e}); on a TPU VM/SLURM/MPI job this is detected, "
                "elsewhere pass --coordinator, --num-processes and --process-id"
            ) from e
        raise LaunchError(f"could not join the coordinator at {coordinator}: {e}") from e
    _joined = {
        "coordinator": coordinator,
        "num_processes": jax.process_count(),
        "process_id": jax.process_index(),
        "heartbeat_timeout": heartbeat_timeout,
    }
    if jax.process_count() > 1:
        name_dead_peers_on_terminate()
    return True


def join_from_args(args: argparse.Namespace) -> bool:
    return join(args.coordinator, args.num_processes, args.process_id, heartbeat_timeout=args.heartbeat_timeout)


def joined() -> bool:
    return _joined is not None


def process_index() -> int:
    return _joined["process_id"] if _joined else 0


def process_count() -> int:
    return _joined["num_processes"] if _joined else 1


def is_writer() -> bool:
    """True on the one process that writes shared files (process 0)."""
    return process_index() == 0


def _client() -> Any:
    from jax._src import distributed as jd  # the coordination service's key-value store and barriers

    return jd.global_state.client


def _key(name: str) -> str:
    """A key unique to this call site and call count: every process makes the same calls in order."""
    n = _counter[name] = _counter.get(name, 0) + 1
    return f"prunejax/{name}/{n}"


def barrier(name: str, timeout_s: int = WAIT_S) -> None:
    """Wait until every process reaches this point (no-op in a single process)."""
    if process_count() > 1:
        _client().wait_at_barrier(_key(f"barrier/{name}"), timeout_s * 1000)


def one_writer(name: str, write: Callable[[], T]) -> T | None:
    """Run `write` on the writer process only; the others wait for it to finish and raise its error
    if it failed, so every process leaves with the same outcome. Returns `write`'s value on the writer."""
    return _on_writer(name, write, share=False)


def decided(name: str, decide: Callable[[], T]) -> T:
    """Process 0's answer to `decide()` (a JSON value), on every process.

    For choices read from shared storage (is this stage done, does that output exist): the other processes
    would read it a moment later, possibly after process 0 has already acted on it, and choose differently.
    """
    return _on_writer(name, decide, share=True)


def _on_writer(name: str, fn: Callable[[], T], share: bool) -> Any:
    global _writing
    if process_count() == 1 or _writing:
        return fn()
    key = _key(f"write/{name}")
    if is_writer():
        _writing = True
        try:
            result = fn()
            word = "ok:" + json.dumps(result) if share else "ok"
        except BaseException as e:
            _client().key_value_set(key, f"error: {type(e).__name__}: {e}")
            raise
        finally:
            _writing = False
        _client().key_value_set(key, word)
        return result
    status = _client().blocking_key_value_get(key, WAIT_S * 1000)
    if not status.startswith("ok"):
        raise LaunchError(
            f"process 0 failed {'deciding' if share else 'writing'} {name}: {status.removeprefix('error: ')}"
        )
    return json.loads(status.removeprefix("ok:")) if share else None


def agree(name: str, value: str) -> None:
    """Raise LaunchError on every process unless every process passed the same `value`."""
    if process_count() == 1:
        return
    key = _key(f"agree/{name}")
    client = _client()
    client.key_value_set(f"{key}/{process_index()}", value)
    values = [client.blocking_key_value_get(f"{key}/{i}", 600_000) for i in range(process_count())]
    differ = [i for i, v in enumerate(values) if v != values[0]]
    if differ:
        raise LaunchError(
            f"processes disagree on {name}: process(es) {', '.join(map(str, differ))} differ from process 0 "
            "(start every process with the same command, code and configs)"
        )


def code_version() -> str:
    """A hash of prunejax's own source files: processes started from different checkouts disagree."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def file_digest(paths: list[str]) -> str:
    """A hash of the named files' names and contents (configs a verb reads), for `agree`."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def input_digest(argv: list[str], *, head_bytes: int = 1 << 16) -> str:
    """What the local paths named on a command line are (not what they are called): for each argument that
    is an existing file or directory, other than the value of --out, each file's path relative to it, size
    and first `head_bytes`. Two processes started from different working directories, whose `models/a`
    are different models, disagree here before any work (their argv agrees)."""
    h = hashlib.sha256()
    outputs = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"} | {
        a.split("=", 1)[1] for a in argv if a.startswith("--out=")
    }
    for arg in argv:
        if arg in outputs or "://" in arg or not os.path.exists(arg):
            continue
        root = Path(arg)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        h.update(arg.encode() + b"\0")
        for f in files:
            with open(f, "rb") as fh:
                head = fh.read(head_bytes)
            h.update(f"{f.relative_to(root) if root.is_dir() else ''}\0{f.stat().st_size}\0".encode() + head)
    return h.hexdigest()


def check_launch(verb: str, argv: list[str], config_files: list[str]) -> None:
    """Every process runs the same verb, argv (apart from --process-id), code, config contents and inputs."""
    if process_count() == 1:
        return
    same = [a for i, a in enumerate(argv) if a != "--process-id" and (i == 0 or argv[i - 1] != "--process-id")]
    same = [a for a in same if not a.startswith("--process-id=")]
    agree("command line", hashlib.sha256("\0".join([verb, *same]).encode()).hexdigest())
    agree("prunejax source code", code_version())
    agree("config file contents", file_digest(config_files))
    agree("the files named on the command line", input_digest(same))


def to_host(x: Any) -> Any:
    """A jax.Array as a full numpy array on every process (gathered when other hosts hold parts of it)."""
    import jax
    import numpy as np

    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def tree_to_host(tree: Any) -> Any:
    import jax

    return jax.tree.map(to_host, tree)


def dead_peers() -> str:
    """Which peers stopped, after this process saw a collective fail: asks the coordination service
    until it has noticed (at most twice the heartbeat timeout and 10 s); the coordinator itself gone
    counts as process 0."""
    import threading
    import time

    # The service declares a silent peer dead after the heartbeat timeout; under load it may take longer.
    deadline = time.time() + 2 * _joined["heartbeat_timeout"] + 10 if _joined else 0
    while time.time() < deadline:
        # The service answers once every live task has asked, like a barrier: a peer stuck in a collective
        # with this process never asks, so the question runs on a thread that may be left behind.
        answer: dict[str, Any] = {}

        def ask(answer: dict[str, Any] = answer) -> None:
            try:
                answer["live"] = _client().get_live_nodes(list(range(process_count())))
            except Exception as e:  # noqa: BLE001 - the service is unreachable: the coordinator is gone
                answer["error"] = e

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.time()))
        if "error" in answer:
            return "process(es) 0 (the coordinator)"
        if "live" not in answer:
            return "no peer answered (they may be alive and waiting for this one)"
        dead = [i for i in range(process_count()) if i not in answer["live"]]
        if dead:
            return "process(es) " + ", ".join(map(str, dead))
        time.sleep(0.5)
    return "no peer (all still alive)"


_on_terminate: Any = None  # the installed ctypes callback (kept alive: the C++ runtime holds a bare pointer)


def name_dead_peers_on_terminate() -> bool:
    """Make an uncaught C++ exception on one of the runtime's threads name the dead peers before the crash.

    XLA's CPU collectives (gloo) give every collective the same tag (0). When a peer was killed
    mid-step, a survivor's gloo transport thread has been seen to throw "Received data size doesn't
    match expected size. Is there a distributed collective mismatch in your code?" (seemingly a message of
    another collective taken for the awaited one). Uncaught on that thread, it ends the process
    through std::terminate at once, before the coordination service names the dead task, and blames
    the code. This handler first says which peers stopped (`dead_peers`: within the heartbeat
    timeout), then hands over to the previous handler, which prints the exception and aborts as
    before. Installed once, in multi-process runs, where the C++ runtime is libstdc++ (Linux: what
    jaxlib links); elsewhere the runtime's own handler stays. Returns whether it is installed."""
    global _on_terminate
    if _on_terminate is not None:
        return True
    import ctypes

    try:
        cxx = ctypes.CDLL("libstdc++.so.6")
        set_terminate, exception_type = cxx._ZSt13set_terminatePFvvE, cxx.__cxa_current_exception_type
    except (OSError, AttributeError):
        return False
    handler_t = ctypes.CFUNCTYPE(None)
    set_terminate.argtypes, set_terminate.restype = [handler_t], ctypes.c_void_p
    exception_type.restype = ctypes.c_void_p
    previous: list[Any] = []

    def on_terminate() -> None:
        try:
            what = _type_name(cxx, exception_type())
            print(
                f"prunejax [process {process_index()}]: error: the runtime ended in an uncaught C++ exception "
                f"({what}) on one of its threads; stopped: {dead_peers()}",
                file=sys.stderr,
                flush=True,
            )
        finally:
            if previous[0]:
                handler_t(previous[0])()  # libstdc++'s handler prints the exception and aborts
            os.abort()

    _on_terminate = handler_t(on_terminate)
    previous.append(set_terminate(_on_terminate))
    return True


def _type_name(cxx: Any, type_info: int | None) -> str:
    """The demangled name of a std::type_info (its second word points at the mangled name)."""
    import ctypes

    if not type_info:
        return "no exception"
    mangled = ctypes.cast(type_info, ctypes.POINTER(ctypes.c_char_p))[1].lstrip(b"*")
    demangle = cxx.__cxa_demangle
    demangle.restype = ctypes.c_void_p
    status = ctypes.c_int()
    out = demangle(mangled, None, None, ctypes.byref(status))
    if status.value != 0 or not out:
        return mangled.decode(errors="replace")
    name = ctypes.string_at(out).decode(errors="replace")
    ctypes.CDLL(None).free(ctypes.c_void_p(out))
    return name


def abort(code: int, wait_s: float = 10.0) -> None:
    """Leave after an error without the runtime's clean shutdown (which waits for every peer).

    Peers that failed the same way (a disagreement, bad input every process saw) meet at an exit
    barrier for at most `wait_s` seconds and process 0, which hosts the coordination service, leaves
    last, so each prints its own error rather than being ended by the service's loss. A peer that
    is busy or dead does not come; then this process leaves anyway, and the others notice it within
    the heartbeat timeout, naming it."""
    import time

    sys.stdout.flush()
    sys.stderr.flush()
    if process_count() > 1:
        try:
            _client().wait_at_barrier("prunejax/exit", int(wait_s * 1000))
            if is_writer():
                time.sleep(1.0)
        except Exception:  # noqa: BLE001 - a peer that does not come: leave anyway
            pass
    os._exit(code)
