"""DATA_DIR: pre-tokenized shards with random access, plus `meta.json`.

Layout:
  meta.json                       format, vocab_size, eos/bos ids, tokenizer, per-split token counts
                                  and shard list, fingerprint (sha256 over the shards' bytes)
  <split>-<NNNNN>.bin             little-endian uint16/uint32 token ids, documents separated by EOS
  tokenizer/                      the tokenizer files, when known

A stage reads a token range (split, offset, count) through `TokenStore.read`, which memory-maps
the shards, so any window is random access without loading the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from prunejax.hf import atomic_dir

FORMAT = "prunejax-data/1"
SHARD_TOKENS = 1 << 26  # 64M tokens per shard file


class DataError(ValueError):
    """A DATA_DIR that is missing, malformed, or asked for tokens it does not have."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


class TokenStore:
    """Read-only random access to a DATA_DIR's splits."""

    def __init__(self, data_dir: str):
        path = os.path.join(data_dir, "meta.json")
        if not os.path.exists(path):
            raise DataError(f"{data_dir}: not a DATA_DIR (meta.json is missing)")
        with open(path) as f:
            self.meta: dict[str, Any] = json.load(f)
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

    def _shards(self, split: str) -> list[np.ndarray]:
        if split not in self._maps:
            maps = []
            for shard in self._split(split)["shards"]:
                file = os.path.join(self.data_dir, shard["file"])
                expected = shard["tokens"] * self.dtype.itemsize
                if not os.path.exists(file) or os.path.getsize(file) != expected:
                    raise DataError(f"{file}: missing or truncated (expected {expected} bytes)")
                maps.append(np.memmap(file, dtype=self.dtype, mode="r", shape=(shard["tokens"],)))
            self._maps[split] = maps
        return self._maps[split]

    def read(self, split: str = "train", offset: int = 0, count: int | None = None) -> np.ndarray:
        """Tokens [offset, offset+count) of a split as int32 (count None = to the end)."""
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
        return out


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

    dtype = token_dtype(vocab_size)
    digest = hashlib.sha256()
    meta: dict[str, Any] = {
        "format": FORMAT,
        "vocab_size": vocab_size,
        "eos_id": eos_id,
        "bos_id": bos_id,
        "dtype": dtype.str,
        "tokenizer": tokenizer or {},
        "splits": {},
        **(extra or {}),
    }
    with atomic_dir(out_dir, overwrite) as tmp:
        for split, chunks in splits.items():
            shards: list[dict[str, Any]] = []
            f = None
            total = 0
            for chunk in chunks:
                chunk = np.asarray(chunk)
                if chunk.size and (chunk.min() < 0 or chunk.max() >= vocab_size):
                    raise DataError(f"split {split!r}: token ids outside [0, {vocab_size})")
                data = chunk.astype(dtype)
                while data.size:
                    if f is None or shards[-1]["tokens"] == shard_tokens:
                        if f is not None:
                            f.close()
                        name = f"{split}-{len(shards):05d}.bin"
                        f = open(os.path.join(tmp, name), "wb")  # noqa: SIM115 - closed below
                        shards.append({"file": name, "tokens": 0})
                    room = shard_tokens - shards[-1]["tokens"]
                    piece, data = data[:room], data[room:]
                    f.write(piece.tobytes())
                    digest.update(piece.tobytes())
                    shards[-1]["tokens"] += int(piece.size)
                    total += int(piece.size)
            if f is not None:
                f.close()
            if total == 0:
                raise DataError(f"split {split!r} is empty")
            meta["splits"][split] = {"tokens": total, "shards": shards}
        meta["fingerprint"] = digest.hexdigest()[:16]
        if tokenizer_dir:
            shutil.copytree(tokenizer_dir, os.path.join(tmp, "tokenizer"))
        with open(os.path.join(tmp, "meta.json"), "w") as fh:
            json.dump(meta, fh, indent=2)
    return out_dir
