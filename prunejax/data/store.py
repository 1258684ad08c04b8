"""DATA_DIR: pre-tokenized shards with random access, plus `meta.json`.

Layout:
  meta.json                       format, vocab_size, eos/bos ids, tokenizer, per-split token counts
                                  and shard list, fingerprint (sha256 over the shards' bytes)
  <split>-<NNNNN>.bin             little-endian uint16/uint32 token ids, documents separated by EOS
  tokenizer/                      the tokenizer files, when known

A stage reads a token range (split, offset, count) through `TokenStore.read`, which memory-maps
the shards, so any window is random access without loading the corpus. Every read checks its token ids
against meta.json's vocabulary (a shard edited or written by another tool can hold ids past it, which
would index past the embedding: NaN in training, NaN or garbage in evaluation), and `TokenStore.check`
scans a whole range with the same check, which every reader calls on its range before any work (the
pipeline's `WindowSource` for training, validation and Sheared; calibration and evaluation read theirs
whole). A clean range is not scanned twice in one process unless its shards change. A DATA_DIR on gs:// (committed
by its marker, see prunejax.storage) is read the same way with one ranged read per range: nothing
downloads the whole corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from prunejax import storage
from prunejax.hf import atomic_dir

FORMAT = "prunejax-data/1"
SHARD_TOKENS = 1 << 26  # 64M tokens per shard file
CHECK_TOKENS = 1 << 24  # tokens `TokenStore.check` reads at a time
_CHECKED: set[tuple[Any, ...]] = set()  # ranges found clean in this process, keyed with their shards' stamps


class DataError(ValueError):
    """A DATA_DIR that is missing, malformed, or asked for tokens it does not have."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


class TokenStore:
    """Read-only random access to a DATA_DIR's splits."""

    def __init__(self, data_dir: str):
        path = storage.join(data_dir, "meta.json")
        self._committed: dict[str, int] | None = None  # a remote DATA_DIR's files and sizes, from its marker
        if storage.is_remote(data_dir):
            self._committed = storage.read_marker(data_dir)
            if "meta.json" not in self._committed:
                raise DataError(f"{data_dir}: not a DATA_DIR (meta.json is missing)")
            self.meta: dict[str, Any] = json.loads(storage.read_file(path))
        else:
            if not os.path.exists(path):
                raise DataError(f"{data_dir}: not a DATA_DIR (meta.json is missing)")
            with open(path) as f:
                self.meta = json.load(f)
        if self.meta.get("format") != FORMAT:
            raise DataError(f"{path}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        self.data_dir = data_dir
        self.dtype = np.dtype(self.meta["dtype"])
        self._maps: dict[str, list[np.ndarray]] = {}

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eos_id(self) -> int | None:
        return self.meta.get("eos_id")

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def tokenizer_dir(self) -> str | None:
        if self._committed is not None:  # only the tokenizer's few files come down
            if not any(f.startswith("tokenizer/") for f in self._committed):
                return None
            return os.path.join(storage.local_dir(self.data_dir, only="tokenizer/"), "tokenizer")
        path = os.path.join(self.data_dir, "tokenizer")
        return path if os.path.isdir(path) else None

    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    def num_tokens(self, split: str = "train") -> int:
        return int(self._split(split)["tokens"])

    def _split(self, split: str) -> dict[str, Any]:
        try:
            return self.meta["splits"][split]
        except KeyError:
            raise DataError(f"{self.data_dir}: no split {split!r}; splits: {', '.join(self.splits())}") from None

    def _shards(self, split: str) -> list[Any]:
        if split not in self._maps:
            maps = []
            for shard in self._split(split)["shards"]:
                file = storage.join(self.data_dir, shard["file"])
                expected = shard["tokens"] * self.dtype.itemsize
                if self._committed is not None:
                    if self._committed.get(shard["file"]) != expected:
                        raise DataError(f"{file}: missing or truncated (expected {expected} bytes)")
                    maps.append(_RemoteShard(file, self.dtype, shard["tokens"]))
                    continue
                if not os.path.exists(file) or os.path.getsize(file) != expected:
                    raise DataError(f"{file}: missing or truncated (expected {expected} bytes)")
                maps.append(np.memmap(file, dtype=self.dtype, mode="r", shape=(shard["tokens"],)))
            self._maps[split] = maps
        return self._maps[split]

    def check(self, split: str = "train", offset: int = 0, count: int | None = None) -> None:
        """Raise DataError unless every token id of [offset, offset+count) of `split` lies in
        [0, vocab_size): the whole range, read once up front (`read` checks what it returns, this scans)."""
        total = self.num_tokens(split)
        end = total if count is None else offset + count
        key = (storage.absolute(self.data_dir), split, offset, end, self._stamps(split))
        if key in _CHECKED:
            return
        for start in range(offset, end, CHECK_TOKENS):
            self.read(split, start, min(CHECK_TOKENS, end - start))
        _CHECKED.add(key)

    def _stamps(self, split: str) -> tuple[Any, ...]:
        """What says a split's shards are the ones checked before: local files' sizes and mtimes; a remote
        DATA_DIR's committed sizes (objects are rewritten only by a new commit)."""
        files = [shard["file"] for shard in self._split(split)["shards"]]
        if self._committed is not None:
            return tuple((f, self._committed.get(f)) for f in files)
        stamps = []
        for f in files:
            path = os.path.join(self.data_dir, f)
            st = os.stat(path) if os.path.exists(path) else None
            stamps.append((f, st and st.st_size, st and st.st_mtime_ns, st and st.st_ino))
        return tuple(stamps)

    def _check_ids(self, tokens: np.ndarray, split: str, offset: int) -> None:
        """DataError naming the shard, the position and the id when `tokens` (read at `offset`) leave the vocabulary."""
        if not tokens.size or (tokens.min() >= 0 and tokens.max() < self.vocab_size):
            return
        i = int(np.flatnonzero((tokens < 0) | (tokens >= self.vocab_size))[0])
        position, file = offset + i, "?"
        for shard in self._split(split)["shards"]:
            if position < shard["tokens"]:
                file = shard["file"]
                break
            position -= shard["tokens"]
        raise DataError(
            f"{storage.join(self.data_dir, file)}: token id {int(tokens[i])} at token {position:,} of the shard "
            f"(position {offset + i:,} of split {split!r}) is outside the vocabulary [0, {self.vocab_size}) "
            "that meta.json records: the DATA_DIR is corrupt or was edited after it was written; rebuild it "
            "(data prepare / data index --overwrite)"
        )

    def read(self, split: str = "train", offset: int = 0, count: int | None = None) -> np.ndarray:
        """Tokens [offset, offset+count) of a split as int32 (count None = to the end), each id checked to lie
        in the vocabulary."""
        total = self.num_tokens(split)
        count = total - offset if count is None else count
        if offset < 0 or count < 0 or offset + count > total:
            raise DataError(
                f"{self.data_dir}: token range [{offset}, {offset + count}) is outside split "
                f"{split!r} of {total:,} tokens"
            )
        out = np.empty((count,), np.int32)
        pos, start = 0, offset
        for m in self._shards(split):
            if start >= len(m):
                start -= len(m)
                continue
            take = min(len(m) - start, count - pos)
            out[pos : pos + take] = m[start : start + take]
            pos += take
            start = 0
            if pos == count:
                break
        self._check_ids(out, split, offset)
        return out


class _RemoteShard:
    """A shard on object storage that reads `[start:stop]` slices with one ranged GET each."""

    def __init__(self, path: str, dtype: np.dtype, tokens: int):
        self.path, self.dtype, self.tokens = path, dtype, tokens

    def __len__(self) -> int:
        return self.tokens

    def __getitem__(self, s: slice) -> np.ndarray:
        start, stop, _ = s.indices(self.tokens)
        size = self.dtype.itemsize
        return np.frombuffer(storage.read_range(self.path, start * size, stop * size), self.dtype)


def fsync_path(path: str) -> None:
    """Make a file's bytes durable, or a directory's entries (files created, renamed or removed in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_shards(directory: str, shards: list[dict[str, Any]], digest: Any) -> None:
    """Feed the bytes of `shards` (meta.json entries) to `digest`, in order."""
    for shard in shards:
        with open(os.path.join(directory, shard["file"]), "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)


class ShardWriter:
    """Appends one split's tokens to `<split>-NNNNN.bin` shards of `shard_tokens` each.

    Opened at `tokens` > 0 it continues a split written before: shard bytes past `tokens` (written
    after the last commit of an interrupted build) are cut off first, so the layout depends only on
    the token stream, never on where a build stopped. `digest`, when given, is fed every byte in order.
    """

    def __init__(
        self,
        directory: str,
        split: str,
        vocab_size: int,
        *,
        shard_tokens: int = SHARD_TOKENS,
        tokens: int = 0,
        digest: Any = None,
    ):
        self.directory, self.split, self.vocab_size = directory, split, vocab_size
        self.dtype, self.shard_tokens, self.tokens, self.digest = token_dtype(vocab_size), shard_tokens, 0, digest
        self._file: Any = None
        self._new_entry = False  # a shard file was created since the last sync: the directory needs an fsync too
        names = [n for n in os.listdir(directory) if re.fullmatch(rf"{re.escape(split)}-\d{{5}}\.bin", n)]
        for shard in self._layout(tokens):
            path = os.path.join(directory, shard["file"])
            size = shard["tokens"] * self.dtype.itemsize
            if not os.path.exists(path) or os.path.getsize(path) < size:
                raise DataError(f"{path}: missing or shorter than the {shard['tokens']:,} tokens committed")
            os.truncate(path, size)
            names.remove(shard["file"])
        for name in names:  # whole shards begun after the last commit
            os.remove(os.path.join(directory, name))
        self.tokens = tokens
        if digest is not None:
            hash_shards(directory, self.shards, digest)

    def _layout(self, tokens: int) -> list[dict[str, Any]]:
        full, rest = divmod(tokens, self.shard_tokens)
        sizes = [self.shard_tokens] * full + ([rest] if rest else [])
        return [{"file": f"{self.split}-{i:05d}.bin", "tokens": n} for i, n in enumerate(sizes)]

    @property
    def shards(self) -> list[dict[str, Any]]:
        """The shard list meta.json records for this split."""
        return self._layout(self.tokens)

    def write(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk)
        if chunk.size and (chunk.min() < 0 or chunk.max() >= self.vocab_size):
            raise DataError(f"split {self.split!r}: token ids outside [0, {self.vocab_size})")
        data = chunk.astype(self.dtype)
        while data.size:
            used = self.tokens % self.shard_tokens
            if self._file is None or used == 0:
                self.close(sync=True)  # a full shard: durable before a later commit claims it
                name = f"{self.split}-{self.tokens // self.shard_tokens:05d}.bin"
                self._file = open(os.path.join(self.directory, name), "ab")  # noqa: SIM115 - closed by close()
                self._new_entry = True
            piece, data = data[: self.shard_tokens - used], data[self.shard_tokens - used :]
            self._file.write(piece.tobytes())
            if self.digest is not None:
                self.digest.update(piece.tobytes())
            self.tokens += int(piece.size)

    def sync(self) -> None:
        """Make everything written so far durable (before a progress record claims it): shards closed at
        rollover were synced then; here the open shard and, when a shard was created, the directory."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        if self._new_entry:
            fsync_path(self.directory)
            self._new_entry = False

    def close(self, sync: bool = False) -> None:
        if self._file is not None:
            if sync:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def new_meta(
    vocab_size: int,
    eos_id: int | None,
    bos_id: int | None = None,
    tokenizer: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """meta.json before its splits and fingerprint are known."""
    return {
        "format": FORMAT,
        "vocab_size": vocab_size,
        "eos_id": eos_id,
        "bos_id": bos_id,
        "dtype": token_dtype(vocab_size).str,
        "tokenizer": tokenizer or {},
        "splits": {},
        **(extra or {}),
    }


def write_data_dir(
    out_dir: str,
    splits: dict[str, Iterable[np.ndarray]],
    *,
    vocab_size: int,
    eos_id: int | None,
    bos_id: int | None = None,
    tokenizer: dict[str, Any] | None = None,
    tokenizer_dir: str | None = None,
    extra: dict[str, Any] | None = None,
    shard_tokens: int = SHARD_TOKENS,
    overwrite: bool = False,
) -> str:
    """Write token chunks (iterables of 1-D int arrays) per split as a DATA_DIR, atomically."""
    import shutil

    digest = hashlib.sha256()
    meta = new_meta(vocab_size, eos_id, bos_id, tokenizer, extra)
    with atomic_dir(out_dir, overwrite) as tmp:
        for split, chunks in splits.items():
            writer = ShardWriter(tmp, split, vocab_size, shard_tokens=shard_tokens, digest=digest)
            try:
                for chunk in chunks:
                    writer.write(chunk)
            finally:
                writer.close()
            if writer.tokens == 0:
                raise DataError(f"split {split!r} is empty")
            meta["splits"][split] = {"tokens": writer.tokens, "shards": writer.shards}
        meta["fingerprint"] = digest.hexdigest()[:16]
        if tokenizer_dir:
            shutil.copytree(tokenizer_dir, os.path.join(tmp, "tokenizer"))
        with open(os.path.join(tmp, "meta.json"), "w") as fh:
            json.dump(meta, fh, indent=2)
    return out_dir
