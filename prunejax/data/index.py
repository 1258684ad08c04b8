"""`index`: ArrayRecord files of pre-tokenized documents -> a DATA_DIR, by conversion.

Each record is one document's token ids: a serialized `tf.train.Example` with an int64 list feature
(how the DCLM authors published theirs; decoded here from the protobuf wire format, no TensorFlow),
or raw little-endian integers (`record_dtype`). Records are read in order, EOS is appended to each
record that does not end with it (unless `append_eos=False`, for records that are chunks of an
EOS-separated stream), ids are checked against the tokenizer's vocabulary, and the tokens are
written as ordinary shards by the same resumable build as `prepare` (`build`).

Conversion rather than reading the ArrayRecord files in place: the pipeline's windows are token
ranges that cross documents, and ArrayRecord gives random access to records, not tokens; every
window would need an offset index, a binary search and several record decodes. Converting costs one
sequential pass and 2-4 bytes a token on disk, and keeps TokenStore, windows and fingerprints the
same for every DATA_DIR.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from prunejax.data import store as store_lib
from prunejax.data.build import Batch, build_data_dir, file_stamps, files_digest, validation_rule
from prunejax.data.sources import expand_files
from prunejax.data.store import SHARD_TOKENS, DataError
from prunejax.data.tokenizer import load_tokenizer, tokenizer_dir, tokenizer_files, tokenizer_info

RECORD_DTYPES = {"uint16": "<u2", "int32": "<i4", "uint32": "<u4", "int64": "<i8"}


# ---- records --------------------------------------------------------------------------------
def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it; at most 10 bytes and below 2**64, as protobuf allows."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated protobuf varint")
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value >> 64:
                raise ValueError("varint above 2**64 - 1")
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message: an int for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0 or wire not in (0, 1, 2, 5):
            raise ValueError("not a protobuf message")
        if wire == 0:
            value, pos = _varint(buf, pos)
        else:
            size, pos = _varint(buf, pos) if wire == 2 else ({1: 8, 5: 4}[wire], pos)
            if pos + size > len(buf):
                raise ValueError("truncated protobuf field")
            value, pos = buf[pos : pos + size], pos + size
        yield number, wire, value


def _messages(buf: memoryview, number: int) -> Iterator[memoryview]:
    """The length-delimited values (messages, strings, packed lists) of field `number`."""
    for n, wire, value in _fields(buf):
        if n == number:
            if wire != 2:
                raise ValueError(f"protobuf field {number} is not length-delimited")
            yield value


def _packed_varints(data: memoryview) -> np.ndarray:
    """Decode packed varints with numpy: each byte's 7 bits shifted by its place in its varint."""
    b = np.frombuffer(data, np.uint8)
    if b.size == 0:
        return np.empty(0, np.int64)
    if b[-1] >= 0x80:
        raise ValueError("truncated packed int64 list")
    ends = np.flatnonzero(b < 0x80)
    starts = np.concatenate(([0], ends[:-1] + 1))
    shifts = 7 * (np.arange(b.size) - np.repeat(starts, ends - starts + 1))
    if shifts.max() > 63:
        raise ValueError("varint longer than 10 bytes")
    if np.any((shifts == 63) & (b > 1)):  # a 10th byte holds only bit 63: more would not fit 64 bits
        raise ValueError("varint above 2**64 - 1")
    return np.add.reduceat((b & 0x7F).astype(np.uint64) << shifts.astype(np.uint64), starts).view(np.int64)


def _int64_list(buf: memoryview) -> np.ndarray:
    """Int64List.value (field 1), packed or not."""
    parts = []
    for number, wire, value in _fields(buf):
        if number == 1:
            parts.append(_packed_varints(value) if wire == 2 else np.asarray([value], np.uint64).view(np.int64))
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _int64_features(record: bytes) -> dict[str, np.ndarray]:
    """Example.features (1) -> Features.feature (1, map entries: key 1, Feature 2) -> Feature.int64_list (3)."""
    lists: dict[str, np.ndarray] = {}
    for features in _messages(memoryview(record), 1):
        for entry in _messages(features, 1):
            key = b"".join(bytes(k) for k in _messages(entry, 1)).decode("utf-8", "replace")
            for value in _messages(entry, 2):
                for int64_list in _messages(value, 3):
                    lists[key] = _int64_list(int64_list)
    return lists


def decode_example(record: bytes, feature: str | None = None) -> np.ndarray:
    """The int64 list `feature` of a serialized tf.train.Example (None: its only int64 list)."""
    try:
        lists = _int64_features(record)
    except ValueError as e:
        raise ValueError(f"not a tf.train.Example ({e}); raw token arrays need --record-dtype") from None
    if feature is not None and feature in lists:
        return lists[feature]
    if feature is None and len(lists) == 1:
        return next(iter(lists.values()))
    if not lists:
        raise ValueError("a record without int64 list features; raw token arrays need --record-dtype")
    wanted = f"no int64 feature {feature!r}" if feature else "more than one int64 feature"
    raise ValueError(f"{wanted}; int64 features: {', '.join(sorted(lists))} (choose one with --feature)")


def decode_raw(record: bytes, dtype: np.dtype) -> np.ndarray:
    """Token ids stored as raw little-endian integers."""
    if len(record) % dtype.itemsize:
        raise ValueError(f"{len(record)} bytes is not a whole number of {dtype.name} values")
    return np.frombuffer(record, dtype).astype(np.int64)


# ---- files ----------------------------------------------------------------------------------
def _open(path: str) -> Any:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    if not reader.ok():
        raise DataError(f"{path}: not an ArrayRecord file")
    return reader


def _num_records(path: str) -> int:
    reader = _open(path)
    try:
        return reader.num_records()
    finally:
        reader.close()


def _record_batches(paths: list[str], sizes: list[int], skip: int, batch: int) -> Iterator[tuple[str, int, list]]:
    """(path, index of its first record, records) in batches of at most `batch`, after the first `skip`."""
    for path, n in zip(paths, sizes, strict=True):
        if skip >= n:
            skip -= n
            continue
        reader = _open(path)
        try:
            for start in range(skip, n, batch):
                yield path, start, reader.read(start, min(start + batch, n))
        finally:
            reader.close()
        skip = 0


def _documents(
    path: str, first: int, records: list, decode: Callable[[bytes], np.ndarray], vocab_size: int, eos: int | None
) -> Batch:
    """Records -> a Batch: ids checked against the vocabulary, EOS appended where missing (eos not None)."""
    docs = []
    for i, record in enumerate(records, first):
        try:
            ids = decode(record)
        except ValueError as e:
            raise DataError(f"{path} record {i}: {e}") from None
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            bad = ids[(ids < 0) | (ids >= vocab_size)][0]
            raise DataError(f"{path} record {i}: token id {bad} is outside the tokenizer's vocab [0, {vocab_size})")
        if eos is not None and (ids.size == 0 or ids[-1] != eos):
            ids = np.append(ids, eos)
        docs.append(ids.astype(np.int32))
    return np.concatenate(docs), np.asarray([len(d) for d in docs], np.int64)


def index_array_records(
    files: Sequence[str],
    tokenizer_src: str,
    out_dir: str,
    *,
    val_fraction: float = 0.05,
    val_files: Sequence[str] = (),
    feature: str | None = None,
    record_dtype: str = "example",
    append_eos: bool = True,
    batch_records: int = 1024,
    overwrite: bool = False,
    progress: bool = True,
    commit_seconds: float = 10.0,
    shard_tokens: int = SHARD_TOKENS,
) -> str:
    """Write the documents of ArrayRecord `files` as a DATA_DIR at `out_dir` (resumable like `prepare`).

    The validation split is every k-th record (`val_fraction`), or all records of `val_files` (then
    `val_fraction` is not used).
    """
    if record_dtype == "example":
        decode: Callable[[bytes], np.ndarray] = functools.partial(decode_example, feature=feature)
    elif record_dtype in RECORD_DTYPES:
        decode = functools.partial(decode_raw, dtype=np.dtype(RECORD_DTYPES[record_dtype]))
    else:
        raise DataError(f"record_dtype {record_dtype!r}: expected example or one of {', '.join(RECORD_DTYPES)}")
    train = expand_files(list(files))
    val = expand_files(list(val_files)) if val_files else []
    if both := sorted(set(train) & set(val)):
        raise DataError(f"{both[0]}: given both as a training and as a validation file")
    paths = train + val
    sizes = [_num_records(p) for p in paths]
    n_train = sum(sizes[: len(train)])
    if val and n_train == sum(sizes):
        raise DataError(f"the validation files hold no records: {', '.join(val)}")
    is_validation = (lambda index: index >= n_train) if val else validation_rule(val_fraction)
    split_rule: dict[str, Any] = {"val_files": val} if val else {"val_fraction": val_fraction}
    source = "array_record:" + ",".join(files)
    with tokenizer_dir(tokenizer_src) as tok_dir:
        tok = load_tokenizer(tok_dir)
        tok_files = tokenizer_files(tok_dir)
        info = tokenizer_info(tok, tokenizer_src)
        meta = store_lib.new_meta(len(tok), tok.eos_token_id, tok.bos_token_id, info, {"source": source, **split_rule})
        fingerprint = {
            "source": source,
            "inputs": [[*stamp, n] for stamp, n in zip(file_stamps(paths), sizes, strict=True)],
            "tokenizer": files_digest(tok_files),
            **split_rule,
            "record_dtype": record_dtype,
            "feature": feature,
            "append_eos": append_eos,
        }
        eos = tok.eos_token_id if append_eos else None

        def batches(skip: int) -> Iterator[Batch]:
            for path, first, records in _record_batches(paths, sizes, skip, batch_records):
                yield _documents(path, first, records, decode, len(tok), eos)

        return build_data_dir(
            out_dir,
            batches,
            meta,
            fingerprint=fingerprint,
            is_validation=is_validation,
            tokenizer_files=tok_files,
            overwrite=overwrite,
            progress="indexing" if progress else None,
            commit_seconds=commit_seconds,
            shard_tokens=shard_tokens,
        )
