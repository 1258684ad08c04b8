"""One writer per output directory, across processes that do not know each other.

A verb that writes a RUN_DIR, STUDY_DIR or MODEL_DIR holds `hold(DIR)` while it writes; a second writer is
refused at once with a LockError naming the holder (host, pid, start time). The lock lies beside the
directory, `PARENT/.NAME.prunejax-lock`, not inside it: a MODEL_DIR is renamed into place or published
whole, which would replace anything in it.

- Local disk: `fcntl.flock` on the lock file. The kernel releases it when the holder exits or dies, so a
  rerun after a crash takes it at once. The file says who holds it and is removed on release.
- gs://: an object created only where none exists (`ifGenerationMatch=0`), holding the holder and a lease
  expiry. A thread renews the lease every third of it (conditional on the generation it wrote). A crashed
  holder stops renewing; once its lease has expired, a new writer replaces the object, conditional on the
  generation it read, so of two writers taking over at once one wins. The lease is PRUNEJAX_LOCK_LEASE
  seconds (default 300), compared against the clock of the host that wants the lock.

In a multi-process run process 0 takes the lock for all (`distributed.one_writer`: the others get its error).
A process may hold one directory's lock more than once (nested writers): it is released by the outermost.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prunejax import distributed, storage

F = TypeVar("F", bound=Callable[..., Any])

LEASE_ENV = "PRUNEJAX_LOCK_LEASE"
DEFAULT_LEASE_S = 300.0
SUFFIX = ".prunejax-lock"
_ATTEMPTS = 5  # a lock file removed or an object replaced between our steps: look again, a bounded number of times

_held: dict[str, tuple[int, Any]] = {}  # lock path -> (depth, the handle that releases it)
_held_guard = threading.Lock()


class LockError(ValueError):
    """Another process is writing the directory (or this one lost its lease)."""


def lock_path(directory: str) -> str:
    """Where the lock of `directory` lies: beside it (a bucket's root keeps its lock at the top)."""
    directory = storage.absolute(directory).rstrip("/")
    if storage.is_remote(directory):
        head, _, name = directory.partition("://")[2].rpartition("/")
        if not head:  # gs://bucket itself
            return f"{directory}/{SUFFIX}"
        return f"{directory.rsplit('/', 1)[0]}/.{name}{SUFFIX}"
    parent, name = os.path.split(directory)
    return os.path.join(parent, f".{name}{SUFFIX}")


def lease_s() -> float:
    """How long a gs:// lock's lease lasts without renewal (PRUNEJAX_LOCK_LEASE, seconds)."""
    return storage.env_seconds(LEASE_ENV, DEFAULT_LEASE_S, LockError)


def _me(what: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "since": time.time(),
        "command": what,
    }


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (it is just starting: its details are not written yet)"
    who = f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('started')}"
    return f"{holder.get('command') or 'a writer'} ({who})"


def _refuse(directory: str, holder: dict[str, Any] | None, extra: str = "") -> LockError:
    return LockError(
        f"{directory} is being written by {_describe(holder)}{extra}; one writer per directory: wait for it to "
        "finish or stop it, or write elsewhere"
    )


@contextlib.contextmanager
def hold(directory: str | None, what: str = "") -> Iterator[None]:
    """Be the only writer of `directory` for the block (nothing for None). `what` names this writer in the
    message a second writer gets (default: this process's command line)."""
    if directory is None:
        yield
        return
    if not what:
        program = os.path.basename(sys.argv[0])
        what = " ".join(["prunejax" if program in ("prunejax", "cli.py") else program, *sys.argv[1:]])
    path = lock_path(directory)
    distributed.one_writer(f"lock {path}", lambda: _acquire(directory, path, what))
    try:
        yield
    except BaseException:
        if distributed.is_writer():
            with contextlib.suppress(Exception):  # the error that stopped the writer is the one to report
                _release(path)
        raise
    if distributed.is_writer():
        _release(path)


def writes(arg: str, what: str = "") -> Callable[[F], F]:
    """Decorate a function whose argument `arg` names the directory it writes: it runs holding its lock."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            directory = signature.bind(*args, **kwargs).arguments.get(arg)
            with hold(directory, what):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _acquire(directory: str, path: str, what: str) -> None:
    with _held_guard:
        if path in _held:
            depth, handle = _held[path]
            _held[path] = (depth + 1, handle)
            return
    handle = (
        _acquire_remote(directory, path, what) if storage.is_remote(path) else _acquire_local(directory, path, what)
    )
    with _held_guard:
        _held[path] = (1, handle)


def _release(path: str) -> None:
    with _held_guard:
        if path not in _held:
            return
        depth, handle = _held.pop(path)
        if depth > 1:
            _held[path] = (depth - 1, handle)
            return
    handle.release()


# ---- local disk ----------------------------------------------------------------------------------


class _LocalLock:
    def __init__(self, path: str, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still locked: whoever opens the path next makes a fresh file
        os.close(self.fd)


def _acquire_local(directory: str, path: str, what: str) -> _LocalLock:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _ in range(_ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.pread(fd, 4096, 0)
            os.close(fd)
            try:
                holder = json.loads(raw) if raw else None
            except ValueError:
                holder = None
            raise _refuse(directory, holder) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder released (removed the file) between our open and our lock: open the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me(what)).encode(), 0)
        return _LocalLock(path, fd)
    raise LockError(f"{directory}: its lock file {path} kept changing under this process; try again")


# ---- object storage --------------------------------------------------------------------------------


def _object(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("://")[2].partition("/")
    return bucket, key


def _write_if(path: str, body: dict[str, Any], generation: str) -> str:
    """Write the lock object only if its generation is `generation` ("0": absent); its new generation.
    FileExistsError when the condition fails (gcsfs's reading of HTTP 412)."""
    bucket, key = _object(path)
    fs = storage.filesystem(path)
    url = f"{fs._location}/upload/storage/v1/b/{{}}/o"  # the JSON API's media upload, with a precondition
    out = storage.call(
        "write the lock",
        path,
        "call",
        "POST",
        url,
        bucket,
        uploadType="media",
        name=key,
        ifGenerationMatch=generation,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/octet-stream"},
        json_out=True,
    )
    return str(out["generation"])


def _read(path: str) -> tuple[dict[str, Any] | None, str]:
    """(holder, generation) of the lock object; FileNotFoundError when there is none."""
    bucket, key = _object(path)
    meta = storage.call("read the lock", path, "call", "GET", "b/{}/o/{}", bucket, key, json_out=True)
    generation = str(meta["generation"])
    _, raw = storage.call(
        "read the lock", path, "call", "GET", "b/{}/o/{}", bucket, key, alt="media", generation=generation
    )
    try:
        return json.loads(raw), generation
    except ValueError:
        return None, generation


class _RemoteLock:
    def __init__(self, directory: str, path: str, body: dict[str, Any], generation: str, lease: float):
        self.directory, self.path, self.body, self.generation, self.lease = directory, path, body, generation, lease
        self.stop = threading.Event()
        self.lost: str | None = None
        self.thread = threading.Thread(target=self._renew, name=f"lease {path}", daemon=True)
        self.thread.start()

    def _renew(self) -> None:
        """Push the expiry forward every third of the lease; give up (and say so) once the lease has run out."""
        while not self.stop.wait(self.lease / 3):
            try:
                body = {**self.body, "expires": time.time() + self.lease}
                self.generation = _write_if(self.path, body, self.generation)
                self.body = body
            except FileExistsError:
                self.lost = "another writer took the lock over (this process's lease had expired)"
            except storage.StorageError as e:
                if time.time() < self.body["expires"]:
                    continue  # the lease still holds: try again at the next turn
                self.lost = f"its lease ran out while it could not be renewed ({e})"
            if self.lost:
                print(f"prunejax: lost the lock of {self.directory}: {self.lost}", file=sys.stderr)
                return

    def release(self) -> None:
        self.stop.set()
        self.thread.join(storage.timeout_s() + 5)
        if self.lost:
            raise LockError(f"{self.directory}: {self.lost}; its contents may have been changed by the other writer")
        bucket, key = _object(self.path)
        with contextlib.suppress(FileNotFoundError, FileExistsError):  # gone or taken over: not ours to remove
            storage.call(
                "remove the lock",
                self.path,
                "call",
                "DELETE",
                "b/{}/o/{}",
                bucket,
                key,
                ifGenerationMatch=self.generation,
            )


def _acquire_remote(directory: str, path: str, what: str) -> _RemoteLock:
    storage.check_bucket(path)
    lease = lease_s()
    for _ in range(_ATTEMPTS):
        body = {**_me(what), "expires": time.time() + lease}
        try:
            return _RemoteLock(directory, path, body, _write_if(path, body, "0"), lease)
        except FileExistsError:
            pass
        try:
            holder, generation = _read(path)
        except FileNotFoundError:
            continue  # released between our two calls
        expires = (holder or {}).get("expires", 0)
        if isinstance(expires, int | float) and expires > time.time():
            left = f", its lease runs {expires - time.time():.0f} s more unless renewed"
            raise _refuse(directory, holder, left)
        body = {**_me(what), "expires": time.time() + lease}
        try:  # an expired lease: its holder died (or lost touch); take over, unless another writer did first
            return _RemoteLock(directory, path, body, _write_if(path, body, generation), lease)
        except FileExistsError:
            continue
    raise LockError(f"{directory}: its lock {path} kept changing under this process; try again")
