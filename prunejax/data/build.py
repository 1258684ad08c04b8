"""Resumable DATA_DIR builds: tokenized documents stream into `<out>.partial/`, renamed to `<out>` when whole.

Each split's tokens are appended to fixed-size shards (`store.ShardWriter`) in the work directory.
Every `commit_seconds` the shards are fsynced and `progress.json` is replaced atomically (write,
fsync, rename) with the documents consumed, the tokens per split, the counts, and the fingerprint of
everything that decides the output: sources, tokenizer files, split rule, shard size. Re-run with
the same arguments after an interruption (Ctrl-C, kill, power loss), a build checks the fingerprint,
cuts the shards back to the committed token counts, skips the committed documents and goes on.
Shard boundaries depend only on the token stream, so the result is byte-identical to an
uninterrupted build; batch size and worker count do not change the output and are not fingerprinted.

Finishing happens in the work directory too: `tokenizer/` and `meta.json` are written and fsynced
there, the directory is renamed to `<out>` (under `--overwrite` an old `<out>` is moved aside first and
put back if the rename fails), and `progress.json` is removed last. Until the rename a rerun finds a
partial build with every document committed and only finishes again; after it, a rerun finds `<out>`
holding the progress record of the same arguments and just removes it.

Which errors keep a partial build: a DataError while building is about the input itself (a malformed
record, a token id outside the vocabulary, an empty split). A resume would stop at the same input, and
mending it changes something fingerprinted (a file's size or mtime, the field, the split rule), so the
partial build could never be resumed: it is removed. Errors of the environment or the arguments (a
missing file, corpus or tokenizer, zstandard or pyarrow not installed) are raised before the work
directory is touched, so they never cost a partial build. Anything else (Ctrl-C, kill, a full disk, an
OSError, a bug) keeps it for the rerun. `--overwrite` replaces a finished `<out>` and discards a partial
build of other arguments; a partial build of the same arguments is resumed either way.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from prunejax import storage
from prunejax.data.store import FORMAT, SHARD_TOKENS, DataError, ShardWriter, fsync_path, hash_shards
from prunejax.hf import _default_permissions

PARTIAL_FORMAT = "prunejax-partial/1"
PROGRESS = "progress.json"

# One batch of documents: their token ids back to back (EOS included), and each one's token count.
Batch = tuple[np.ndarray, np.ndarray]


def val_every(val_fraction: float) -> int:
    """Every k-th document is held out, k = 1/val_fraction rounded half up (0.4 -> 3, 33%); 0 means no
    validation split. k never grows with the fraction; 1/k is the fraction realized."""
    if not 0.0 <= val_fraction < 0.5:
        raise DataError(f"val_fraction must be in [0, 0.5), got {val_fraction}")
    return 0 if val_fraction == 0 else max(2, math.floor(1 / val_fraction + 0.5))


def validation_rule(val_fraction: float) -> Callable[[np.ndarray], np.ndarray] | None:
    """Which documents (by 0-based index) are held out: the k-th, 2k-th, ... counting from 1 (None: none)."""
    k = val_every(val_fraction)
    return None if k == 0 else lambda index: (index + 1) % k == 0


def file_stamps(paths: Sequence[str]) -> list[list[Any]]:
    """[path, size, mtime in ns] of each input file, for the fingerprint: a file that changed size or was
    written since (an edit that keeps the size included) is not resumed. Contents are not hashed: that
    would read the whole corpus before every run."""
    stamps = []
    for path in paths:
        if storage.is_remote(path):  # an object's generation changes with every write
            info = storage.filesystem(path).info(path)
            stamps.append([path, int(info["size"]), str(info.get("generation") or info.get("updated"))])
            continue
        st = os.stat(path)
        stamps.append([storage.absolute(path), st.st_size, st.st_mtime_ns])
    return stamps


def files_digest(paths: Sequence[str]) -> str:
    """sha256 over the names and bytes of `paths` (the tokenizer files)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def work_dir(out_dir: str) -> str:
    return os.path.abspath(out_dir) + ".partial"


def build_data_dir(
    out_dir: str,
    batches: Callable[[int], Iterable[Batch]],
    meta: dict[str, Any],
    *,
    fingerprint: dict[str, Any],
    is_validation: Callable[[np.ndarray], np.ndarray] | None,
    tokenizer_files: Sequence[str] = (),
    overwrite: bool = False,
    progress: str | None = None,
    commit_seconds: float = 10.0,
    shard_tokens: int = SHARD_TOKENS,
) -> str:
    """Write the documents of `batches(skip)` (all but the first `skip`) as a DATA_DIR at `out_dir`.

    `meta` is `store.new_meta(...)`; `is_validation` flags held-out documents by index (None: no
    validation split); `progress` is the progress bar's label (None: no bar). An interrupted build
    with the same `fingerprint` is resumed.
    """
    fingerprint = json.loads(json.dumps({**fingerprint, "format": FORMAT, "shard_tokens": shard_tokens}))
    if _finished(out_dir, fingerprint):
        return out_dir
    storage.check_free(out_dir, overwrite)
    work = work_dir(out_dir)
    splits = ["train", "validation"] if is_validation else ["train"]
    record = _resume(work, fingerprint, overwrite)
    if record is not None:
        try:
            writers, digest = _writers(work, record, splits, meta["vocab_size"], shard_tokens)
        except DataError as e:
            if not overwrite:
                raise DataError(f"{e}; pass --overwrite to discard {work} and start over") from None
            record = None
    if record is None:
        record = _start(work, fingerprint)
        writers, digest = _writers(work, record, splits, meta["vocab_size"], shard_tokens)
    try:
        _fill(work, record, writers, batches, is_validation, progress, commit_seconds)
        counts = record["counts"]
        if counts["documents"] == 0:
            raise DataError("no documents: the source is empty")
        if is_validation and counts["validation_documents"] == 0:
            raise DataError(
                f"only {counts['documents']} document(s): none held out for validation; "
                "lower --val-fraction to 0 or add documents"
            )
        for split, writer in writers.items():
            if writer.tokens == 0:
                raise DataError(f"split {split!r} is empty")
    except DataError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if "validation" in writers:
        hash_shards(work, writers["validation"].shards, digest)
    meta = {
        **meta,
        "splits": {split: {"tokens": w.tokens, "shards": w.shards} for split, w in writers.items()},
        "counts": record["counts"],
        "fingerprint": digest.hexdigest()[:16],
    }
    _finish(work, out_dir, meta, tokenizer_files, overwrite)
    return out_dir


def _finish(work: str, out_dir: str, meta: dict[str, Any], tokenizer_files: Sequence[str], overwrite: bool) -> None:
    """Make the work directory the DATA_DIR: tokenizer/ and meta.json written durably inside it, renamed to
    `out_dir`, then its progress record removed. Every document is committed by now, so an interruption
    before the rename leaves a partial build whose rerun only finishes again."""
    _check_read_back(work, meta)
    tok_dir = os.path.join(work, "tokenizer")
    if os.path.exists(tok_dir):  # from an interrupted finish
        shutil.rmtree(tok_dir)
    if tokenizer_files:
        os.makedirs(tok_dir)
        for path in tokenizer_files:
            fsync_path(shutil.copy(path, tok_dir))
        fsync_path(tok_dir)
    _write_json(work, "meta.json", meta)
    _default_permissions(work)
    parent = os.path.dirname(work)
    aside = None
    try:
        if os.path.exists(out_dir):
            storage.check_free(out_dir, overwrite)  # it appeared while we were building
            aside = os.path.join(tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.old-"), "x")
            os.replace(out_dir, aside)
        os.replace(work, out_dir)
    except BaseException:
        if aside is not None and os.path.exists(aside) and not os.path.exists(out_dir):
            os.replace(aside, out_dir)
        if aside is not None:
            shutil.rmtree(os.path.dirname(aside), ignore_errors=True)
        raise
    fsync_path(parent)
    os.remove(os.path.join(out_dir, PROGRESS))
    fsync_path(out_dir)
    if aside is not None:
        shutil.rmtree(os.path.dirname(aside))


def _check_read_back(work: str, meta: dict[str, Any]) -> None:
    """The shards on disk must hash to the fingerprint of the bytes that were written (train, then
    validation): a shard damaged after writing fails the build here instead of training on it."""
    digest = hashlib.sha256()
    for split in meta["splits"].values():
        hash_shards(work, split["shards"], digest)
    if digest.hexdigest()[:16] != meta["fingerprint"]:
        raise DataError(
            f"{work}: the shards read back differently from what was written (fingerprint "
            f"{digest.hexdigest()[:16]}, written {meta['fingerprint']}); rerun with --overwrite to build again"
        )


def _finished(out_dir: str, fingerprint: dict[str, Any]) -> bool:
    """Whether `out_dir` is this very build, renamed into place but interrupted before its progress record
    was removed; if so, remove it now."""
    path = os.path.join(out_dir, PROGRESS)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
        return False
    if not os.path.exists(os.path.join(out_dir, "meta.json")):
        return False
    os.remove(path)
    fsync_path(out_dir)
    return True


def _writers(
    work: str, record: dict[str, Any], splits: list[str], vocab_size: int, shard_tokens: int
) -> tuple[dict[str, ShardWriter], Any]:
    """Shard writers at the committed token counts, and the fingerprint digest over what train holds so far
    (validation bytes join it at the end, as in `store.write_data_dir`)."""
    digest = hashlib.sha256()
    writers = {
        split: ShardWriter(
            work,
            split,
            vocab_size,
            shard_tokens=shard_tokens,
            tokens=record["tokens"].get(split, 0),
            digest=digest if split == "train" else None,
        )
        for split in splits
    }
    return writers, digest


def _fill(
    work: str,
    record: dict[str, Any],
    writers: dict[str, ShardWriter],
    batches: Callable[[int], Iterable[Batch]],
    is_validation: Callable[[np.ndarray], np.ndarray] | None,
    progress: str | None,
    commit_seconds: float,
) -> None:
    """Append every remaining batch to the shards, committing progress every `commit_seconds`."""
    from tqdm import tqdm

    counts = record["counts"]
    it = iter(batches(counts["documents"]))
    bar = tqdm(desc=progress, unit=" docs", initial=counts["documents"], disable=progress is None)
    last_commit = time.monotonic()
    try:
        for ids, lengths in it:
            first = counts["documents"]
            if is_validation is None:
                writers["train"].write(ids)
            else:
                held = is_validation(np.arange(first, first + len(lengths)))
                mask = np.repeat(held, lengths)
                writers["train"].write(ids[~mask])
                writers["validation"].write(ids[mask])
                counts["validation_documents"] += int(held.sum())
            counts["documents"] += len(lengths)
            bar.update(len(lengths))
            if time.monotonic() - last_commit >= commit_seconds:
                _commit(work, record, writers)
                last_commit = time.monotonic()
        _commit(work, record, writers)
    finally:
        bar.close()
        for writer in writers.values():
            writer.close()
        if hasattr(it, "close"):  # a generator: stop its worker pool now, not at garbage collection
            it.close()


def _commit(work: str, record: dict[str, Any], writers: dict[str, ShardWriter]) -> None:
    for writer in writers.values():
        writer.sync()
    record["tokens"] = {split: w.tokens for split, w in writers.items()}
    _write_record(work, record)


def _write_record(directory: str, record: dict[str, Any]) -> None:
    """Replace `directory/progress.json` atomically and durably."""
    _write_json(directory, PROGRESS, record)


def _write_json(directory: str, name: str, obj: dict[str, Any]) -> None:
    """Replace `directory/name` atomically and durably (write, fsync, rename, fsync the directory)."""
    path = os.path.join(directory, name)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    fsync_path(directory)


def _start(work: str, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A fresh work directory, born with its progress record (so a work dir without one is not ours)."""
    if os.path.exists(work):
        shutil.rmtree(work)
    record = {
        "format": PARTIAL_FORMAT,
        "fingerprint": fingerprint,
        "counts": {"documents": 0, "validation_documents": 0},
        "tokens": {},
    }
    os.makedirs(os.path.dirname(work), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(work), prefix=f".{os.path.basename(work)}-")
    _write_record(tmp, record)
    os.replace(tmp, work)
    return record


def _resume(work: str, fingerprint: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The progress record of an interrupted build to continue, or None to start afresh."""
    if not os.path.exists(work):
        return None
    path = os.path.join(work, PROGRESS)
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict) or record.get("format") != PARTIAL_FORMAT:
            raise ValueError(f"format is not {PARTIAL_FORMAT!r}")
        numbers = [record["counts"]["documents"], record["counts"]["validation_documents"], *record["tokens"].values()]
        if not all(isinstance(n, int) and n >= 0 for n in numbers):
            raise ValueError("counts and tokens must be non-negative integers")
        old = record["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        if overwrite:
            return None
        raise DataError(
            f"{path}: not a readable progress record ({e}); pass --overwrite to discard {work} and start over"
        ) from None
    if old != fingerprint:
        if overwrite:
            return None
        raise DataError(
            f"{work} holds an interrupted build with other arguments ({_differences(old, fingerprint)}); "
            "rerun with the same arguments to resume it, or pass --overwrite to start over"
        )
    return record


def _differences(old: Any, new: dict[str, Any]) -> str:
    def short(value: Any) -> str:
        text = json.dumps(value)
        return text if len(text) <= 80 else text[:77] + "..."

    old = old if isinstance(old, dict) else {}
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {short(old.get(k))} then, {short(new.get(k))} now" for k in changed)
