"""Object storage (`gs://bucket/prefix`) beside local paths, through fsspec (gcsfs for `gs://`).

An object store has no atomic rename, so a directory artifact is *committed* by a marker object
written after every other object: `_PRUNEJAX_COMMITTED`, a JSON list of the files and their sizes.
A reader refuses a remote directory without its marker (naming it) and checks every listed file.
Directories are staged through local temporary copies: `local_dir(path)` gives a local copy of a
committed remote directory (cached per process), `publish(local, path)` uploads a finished local
directory and commits it. Single files (results.json) are one object each, which appears whole.

gcsfs honours `STORAGE_EMULATOR_HOST` (a local emulator in tests); with it set, gcsfs's
experimental zonal/HNS file system is turned off (it asks a gRPC control plane that an emulator does
not have about every bucket before every call). Orbax's checkpoints go through
tensorstore, which reads its own variable, TENSORSTORE_GCS_HTTP_URL: when only STORAGE_EMULATOR_HOST
is set, prunejax points tensorstore at the same emulator before the first checkpoint, so one run never
writes half its files to the emulator and half to Google.

Storage that stops answering is an error, not a hang: every call here has a deadline, PRUNEJAX_STORAGE_TIMEOUT
seconds (default 180) for the whole call, its retries included (gcsfs retries a failed request a bounded number
of times; a request that receives nothing for a quarter of the deadline counts as failed), and fails with one
StorageError naming the bucket and the operation. So does each request of the gcsfs file systems that other
libraries open through fsspec (Orbax's JSON and metadata), through `bound_gcsfs`. Tensorstore's requests
(Orbax's arrays) get the same stall limit. A transfer's deadline grows by one second per MB moved.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any

from prunejax import distributed

MARKER = "_PRUNEJAX_COMMITTED"
SCHEMES = ("gs://",)
TIMEOUT_ENV = "PRUNEJAX_STORAGE_TIMEOUT"
DEFAULT_TIMEOUT_S = 180.0
# GCS's rule for bucket names without dots (dotted names are domain names and need verification)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]")

_cache: dict[tuple[str, str], str] = {}  # (remote dir, sub-directory) -> local copy
_cache_root: str | None = None


class StorageError(ValueError):
    """A remote path that cannot be used: no such bucket, no credentials, an uncommitted artifact."""


def is_remote(path: str | os.PathLike | None) -> bool:
    return path is not None and str(path).startswith(SCHEMES)


def env_seconds(name: str, default: float, error: type[Exception]) -> float:
    """A positive, finite number of seconds from environment variable `name` (`default` when unset);
    anything else raises `error` naming the variable."""
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise error(f"{name}={raw!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise error(f"{name}={raw!r} must be a positive, finite number of seconds")
    return value


def timeout_s() -> float:
    """The deadline of one storage call, retries included (PRUNEJAX_STORAGE_TIMEOUT, seconds)."""
    return env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S, StorageError)


def bucket_of(path: str) -> str:
    return str(path).split("://", 1)[1].split("/", 1)[0]


def filesystem(path: str) -> Any:
    """The fsspec filesystem serving `path` (gcsfs for gs://), its requests bounded by the storage deadline."""
    import fsspec

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # gcsfs's default file system asks GCS's gRPC control plane for every bucket's layout before each
        # call, which an emulator does not serve: each call then fails that lookup and logs a warning
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    if is_remote(path):
        import aiohttp

        # a request that receives nothing for a quarter of the deadline fails (and is retried, a bounded number
        # of times); set as fsspec's default so the instances Orbax's epath makes get it too
        stall = max(timeout_s() / 4, 1.0)
        limit = aiohttp.ClientTimeout(total=None, sock_connect=stall, sock_read=stall)
        fsspec.config.conf["gs"] = {**fsspec.config.conf.get("gs", {}), "requests_timeout": limit}
        # gcsfs logs each failed retry with a traceback; the StorageError raised here says it once
        logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    try:
        if is_remote(path):
            bound_gcsfs()
        return fsspec.filesystem(str(path).split("://", 1)[0])
    except ImportError as e:
        raise StorageError(f"{path}: gs:// needs gcsfs: pip install -e '.[gcs]' ({e})") from e


def no_answer(bucket: str, operation: str, deadline: float) -> str:
    return (
        f"bucket {bucket!r} did not answer ({operation}) within {deadline:g} s ({TIMEOUT_ENV}); "
        "is the storage service reachable?"
    )


def _nbytes(data: Any) -> int:
    """The size of a request body as gcsfs passes it: bytes-like, a BytesIO, a str, or none."""
    if data is None:
        return 0
    if isinstance(data, str):
        return len(data.encode())
    if hasattr(data, "getbuffer"):
        return data.getbuffer().nbytes
    try:
        return memoryview(data).nbytes
    except TypeError:  # a stream of unknown length: the base deadline
        return 0


def bound_gcsfs() -> None:
    """Make fsspec's `gs`/`gcs` file system, once per process, gcsfs's with a deadline on every request, its
    retries included: `timeout_s()` plus a second per MB sent, then a StorageError naming the bucket. The
    calls made here pass deadlines of their own, but the file systems other libraries open do not (Orbax
    writes its JSON and metadata through etils' epath), and gcsfs retries a request that gets no answer six
    times, 1 + 2 + 4 + 8 + 16 s apart: a frozen store held a train run's save for minutes, call after call."""
    import fsspec
    import gcsfs

    if getattr(fsspec.get_filesystem_class("gs"), "prunejax_deadline", False):
        return

    class DeadlineGCSFileSystem(gcsfs.GCSFileSystem):
        prunejax_deadline = True

        async def _call(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
            import asyncio

            deadline = timeout_s() + _nbytes(kwargs.get("data")) / 1e6
            try:
                return await asyncio.wait_for(super()._call(method, path, *args, **kwargs), deadline)
            except TimeoutError:  # wait_for's, or aiohttp's after gcsfs's last retry
                url = self._format_path(path, args)
                bucket = m.group(1) if (m := re.search(r"/b/([^/?]+)", url)) else "?"
                raise StorageError(no_answer(bucket, f"{method} {url}", deadline)) from None

    for protocol in ("gs", "gcs"):
        fsspec.register_implementation(protocol, DeadlineGCSFileSystem, clobber=True)


def call(operation: str, path: str, method: str, *args: Any, nbytes: int = 0, **kwargs: Any) -> Any:
    """`filesystem(path).method(*args, **kwargs)` within the storage deadline (plus a second per MB of
    `nbytes` moved); a failure other than a missing or already existing object is one StorageError naming
    the bucket and `operation`."""
    from fsspec.exceptions import FSTimeoutError

    deadline = timeout_s() + nbytes / 1e6
    fs = filesystem(path)
    try:
        return getattr(fs, method)(*args, timeout=deadline, **kwargs)
    except (FileNotFoundError, FileExistsError, StorageError):
        raise
    except (FSTimeoutError, TimeoutError) as e:
        raise StorageError(no_answer(bucket_of(path), f"{operation} {path}", deadline)) from e
    except Exception as e:  # noqa: BLE001 - network, auth, server errors: one message naming the bucket
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise StorageError(
            f"bucket {bucket_of(path)!r}: {operation} {path} failed ({type(e).__name__}{': ' if reason else ''}"
            f"{reason})"
        ) from e


def absolute(path: str) -> str:
    """What provenance records for a path: a gs:// URL as given, a local path made absolute."""
    return str(path) if is_remote(path) else os.path.abspath(path)


def join(path: str, *parts: str) -> str:
    return "/".join([str(path).rstrip("/"), *parts]) if is_remote(path) else os.path.join(path, *parts)


def check_bucket(path: str) -> None:
    """A StorageError naming the bucket when its name is not one GCS accepts, or it does not exist or cannot
    be reached (credentials, network)."""
    bucket = bucket_of(path)
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise StorageError(
            f"{path}: {bucket!r} is not a valid bucket name (3-63 characters: lowercase letters, digits, dashes, "
            "underscores and dots, starting and ending with a letter or digit)"
        )
    try:
        found = call("check bucket", path, "exists", bucket)
    except StorageError as e:  # auth or network: say which bucket and why
        raise StorageError(f"{path}: cannot reach bucket {bucket!r}: {e}") from e
    if not found:
        raise StorageError(f"{path}: bucket {bucket!r} does not exist (or these credentials cannot see it)")


def committed(path: str) -> bool:
    """Whether a remote directory carries its commit marker."""
    return call("look for the commit marker of", path, "exists", join(path, MARKER))


def exists(path: str) -> bool:
    """A local path, or a remote object or prefix (a directory with any object under it, committed or not)."""
    return call("look for", path, "exists", path) if is_remote(path) else os.path.exists(path)


def check_free(path: str, overwrite: bool, directory: bool = True) -> None:
    """FileExistsError unless `path` (local or remote, file or directory) is absent or an empty local
    directory, or `overwrite` is set: the one "exists, pass --overwrite" rule of every output. A local
    file where a `directory` output goes (or a directory where a file goes) is refused even with
    `overwrite`: it is not an earlier result but something else, which --overwrite would destroy. A remote
    `path` whose bucket does not exist (or cannot be reached) is a StorageError naming it, before any work."""
    if is_remote(path):
        check_bucket(path)
    elif os.path.exists(path) and os.path.isdir(path) != directory:
        found, wanted = ("a directory", "a file") if os.path.isdir(path) else ("a file", "a directory")
        raise FileExistsError(f"{path} is {found}, but this output is {wanted}: choose another path")
    if overwrite or not exists(path):
        return
    if not is_remote(path) and os.path.isdir(path):
        if os.listdir(path):
            raise FileExistsError(f"{path} exists and is not empty (pass --overwrite)")
        return
    raise FileExistsError(f"{path} exists (pass --overwrite)")


def refuse_input(out: str, src: str, flag: str) -> None:
    """A ValueError when `out` is the input `src` itself: --overwrite would replace what is being read."""
    same = (
        out.rstrip("/") == src.rstrip("/")
        if is_remote(out) or is_remote(src)
        else os.path.realpath(out) == os.path.realpath(src)
    )
    if same:
        raise ValueError(f"--out {out} is the input {flag}; write the result elsewhere (the input would be lost)")


def refuse_existing(path: str, overwrite: bool, directory: bool = True) -> None:
    """`check_free` before a verb's work, decided by process 0 alone (the others take its word): a process
    that gets here after process 0 has already written `path` (no collective in between, as for magnitude
    pruning) must not call that a leftover."""
    distributed.one_writer(f"check --out {path}", lambda: check_free(path, overwrite, directory))


def read_marker(path: str) -> dict[str, int]:
    """The committed files of a remote directory and their sizes; refuses one without a marker."""
    check_bucket(path)
    try:
        raw = call("read the commit marker of", path, "cat_file", join(path, MARKER))
    except FileNotFoundError:
        if exists(path) and call("list", path, "ls", path, detail=False):
            raise StorageError(
                f"{path} has no commit marker {MARKER}: it is incomplete (a writer stopped before committing) "
                "or not a prunejax artifact; rerun the stage that writes it"
            ) from None
        raise FileNotFoundError(f"{path} does not exist") from None
    return json.loads(raw)["files"]


def local_dir(path: str, only: str | tuple[str, ...] = "") -> str:
    """`path` itself when local; else a local copy of the committed remote directory (downloaded once
    per process, each file checked against the marker's size). `only` downloads just the files whose
    path starts with it (a DATA_DIR's "tokenizer/", not its shards, which are read by range; or the
    tokenizer files of a MODEL_DIR, not its weights)."""
    if not is_remote(path):
        return path
    key = str(path).rstrip("/")
    if (key, only) in _cache:
        return _cache[key, only]
    files = read_marker(key)
    local = tempfile.mkdtemp(dir=_root(), prefix="dir-")
    for rel, size in files.items():
        if not rel.startswith(only):
            continue
        dst = os.path.join(local, *rel.split("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            call("download", join(key, rel), "get_file", join(key, rel), dst, nbytes=size)
        except FileNotFoundError:
            raise StorageError(
                f"{join(key, rel)}: listed by the commit marker of {key} but missing from the store (deleted after "
                "the commit): the directory is incomplete; write it again"
            ) from None
        if os.path.getsize(dst) != size:
            raise StorageError(f"{join(key, rel)}: {os.path.getsize(dst)} bytes, its commit marker says {size}")
    _cache[key, only] = local
    return local


def read_range(path: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a remote object: one ranged GET, nothing else is downloaded."""
    data = call("read", path, "cat_file", path, start=start, end=end, nbytes=end - start)
    if len(data) != end - start:
        raise StorageError(f"{path}: asked for bytes [{start}, {end}), got {len(data)}")
    return data


def staging_dir(path: str) -> str:
    """A local directory that stands for remote output `path` while it is built: the same one on every run
    on this machine (under ~/.cache/prunejax/staging), so an interrupted build resumes from its progress."""
    import hashlib

    root = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "prunejax", "staging")
    key = hashlib.sha256(str(path).rstrip("/").encode()).hexdigest()[:16]
    os.makedirs(root, exist_ok=True)
    return os.path.join(root, f"{key}-{str(path).rstrip('/').rsplit('/', 1)[-1]}")


def publish(local: str, path: str, overwrite: bool = False) -> str:
    """Upload the finished local directory `local` to remote `path` and commit it (marker last).
    An existing committed directory needs `overwrite`; its marker is removed first, so a crash midway
    leaves an uncommitted directory that readers refuse, never a mix that looks complete."""
    check_bucket(path)
    path = str(path).rstrip("/")
    if committed(path):
        if not overwrite:
            raise FileExistsError(f"{path} exists (pass --overwrite)")
        call("uncommit", path, "rm_file", join(path, MARKER))
    if exists(path):
        call("clear", path, "rm", path, recursive=True)
    files = {}
    for base, _, names in os.walk(local):
        for name in sorted(names):
            src = os.path.join(base, name)
            rel = os.path.relpath(src, local).replace(os.sep, "/")
            files[rel] = os.path.getsize(src)
            call("upload", join(path, rel), "put_file", src, join(path, rel), nbytes=files[rel])
    marker = json.dumps({"format": "prunejax-commit/1", "files": files}, indent=1).encode()
    call("commit", path, "pipe_file", join(path, MARKER), marker)
    for cached in [k for k in _cache if k[0] == path]:
        _cache.pop(cached)
    return path


def list_names(path: str) -> list[str]:
    """The names directly under a local directory or a remote prefix."""
    if is_remote(path):
        filesystem(path).invalidate_cache(path)
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in call("list", path, "ls", path, detail=False))
    return sorted(os.listdir(path))


def remove_file(path: str) -> None:
    """Delete one local file or one remote object."""
    if is_remote(path):
        call("delete", path, "rm_file", path)
    else:
        os.remove(path)


def remove_tree(path: str) -> None:
    """Delete a local directory or everything under a remote prefix."""
    if is_remote(path):
        call("delete", path, "rm", path, recursive=True)
    else:
        shutil.rmtree(path)


def write_file(path: str, data: bytes) -> None:
    """One object (or an atomic local file write through a temporary sibling)."""
    if is_remote(path):
        check_bucket(path)
        call("write", path, "pipe_file", path, data, nbytes=len(data))
        return
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the others sharing the directory
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_file(path: str) -> bytes:
    if is_remote(path):
        return call("read", path, "cat_file", path)
    with open(path, "rb") as f:
        return f.read()


def prepare_tensorstore() -> None:
    """Give tensorstore's HTTP requests (Orbax's gs:// checkpoints) the storage stall limit, and point its GCS
    driver at the emulator gcsfs uses (STORAGE_EMULATOR_HOST), unless told otherwise (the TENSORSTORE_*
    variables). Must run before tensorstore's first gs:// request: it reads the variables once."""
    bound_gcsfs()  # Orbax's JSON and metadata go through gcsfs, before its first gs:// file system
    stall = max(round(timeout_s() / 4), 1)
    os.environ.setdefault("TENSORSTORE_CURL_CONNECT_TIMEOUT_SECONDS", str(stall))
    os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS", str(stall))  # below 1 byte/s for that long
    os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES", "1")
    # tensorstore retries a failed GCS request 32 times, up to 32 s apart (many minutes against a storage that
    # stopped answering); Orbax builds every context from these two dicts, so bound the retries there: about
    # the storage deadline in all
    from orbax.checkpoint._src.serialization import tensorstore_utils

    retries = {"max_retries": 3, "initial_delay": "1s", "max_delay": f"{stall}s"}
    for context in (tensorstore_utils._BASE_TS_CONTEXT, tensorstore_utils._DEFAULT_OCDBT_TS_CONTEXT):
        context["gcs_request_retries"] = retries
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if host and "TENSORSTORE_GCS_HTTP_URL" not in os.environ:
        os.environ["TENSORSTORE_GCS_HTTP_URL"] = host if "://" in host else f"http://{host}"


def refuse_remote(path: str | None, what: str) -> None:
    """A clear error for a remote path where prunejax cannot use one yet."""
    if is_remote(path):
        raise StorageError(
            f"{what} {path}: gs:// is supported for MODEL_DIRs, DATA_DIRs, RUN_DIRs, STUDY_DIRs, configs, --text files "
            "and results.json; "
            f"a {what} on object storage is not yet (docs/status.md)"
        )


def _root() -> str:
    global _cache_root
    if _cache_root is None:
        _cache_root = tempfile.mkdtemp(prefix="prunejax-remote-")
        atexit.register(shutil.rmtree, _cache_root, True)
    return _cache_root
