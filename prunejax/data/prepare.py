"""`prepare`: documents -> token ids (EOS after each document) -> a DATA_DIR with a held-out split.

Documents are tokenized in batches by the Rust fast tokenizer (`encode_batch`, which runs on all
cores through its own thread pool) and streamed to the shards, so memory holds one batch, never
the corpus. Every k-th document (k = round(1/val_fraction)) goes to the validation split: the
assignment is deterministic, spread over the whole corpus, and independent of batch sizes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from prunejax.data import store as store_lib
from prunejax.data.store import DataError
from prunejax.data.tokenizer import load_tokenizer, tokenizer_dir, tokenizer_info
from prunejax.hf import TOKENIZER_FILES


def _batches(documents: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in documents:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def val_every(val_fraction: float) -> int:
    """Every k-th document is held out; 0 means no validation split."""
    if not 0.0 <= val_fraction < 0.5:
        raise DataError(f"val_fraction must be in [0, 0.5), got {val_fraction}")
    return 0 if val_fraction == 0 else max(2, round(1 / val_fraction))


def tokenize_documents(
    documents: Iterable[str],
    tok: Any,
    *,
    val_fraction: float = 0.05,
    batch_docs: int = 256,
    progress: bool = True,
) -> tuple[Iterator[np.ndarray], Iterator[np.ndarray], dict[str, int]]:
    """(train chunks, validation chunks, counts). Train must be consumed first: it fills validation."""
    from tqdm import tqdm

    k = val_every(val_fraction)
    eos = np.asarray([tok.eos_token_id], np.int32)
    backend = tok.backend_tokenizer
    counts = {"documents": 0, "validation_documents": 0}
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed when validation is consumed

    def train_chunks() -> Iterator[np.ndarray]:
        bar = tqdm(desc="tokenizing", unit=" docs", disable=not progress)
        for batch in _batches(documents, batch_docs):
            encodings = backend.encode_batch(batch, add_special_tokens=False)
            train_parts, val_parts = [], []
            for enc in encodings:
                ids = np.concatenate([np.asarray(enc.ids, np.int32), eos])
                counts["documents"] += 1
                if k and counts["documents"] % k == 0:
                    counts["validation_documents"] += 1
                    val_parts.append(ids)
                else:
                    train_parts.append(ids)
            if val_parts:
                spool.write(np.concatenate(val_parts).astype("<i4").tobytes())
            bar.update(len(batch))
            if train_parts:
                yield np.concatenate(train_parts)
        bar.close()
        if counts["documents"] == 0:
            raise DataError("no documents to tokenize")
        if k and counts["validation_documents"] == 0:
            raise DataError(
                f"only {counts['documents']} document(s): none held out for validation at every {k}th; "
                "lower --val-fraction to 0 or add documents"
            )

    def val_chunks() -> Iterator[np.ndarray]:
        try:
            spool.seek(0)
            while chunk := spool.read(1 << 24):
                yield np.frombuffer(chunk, "<i4")
        finally:
            spool.close()

    return train_chunks(), val_chunks(), counts


def prepare(
    documents: Iterable[str],
    tokenizer_src: str,
    out_dir: str,
    *,
    val_fraction: float = 0.05,
    batch_docs: int = 256,
    source: str = "",
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Tokenize `documents` with the tokenizer at `tokenizer_src` and write a DATA_DIR at `out_dir`."""
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass --overwrite)")
    with tokenizer_dir(tokenizer_src) as tok_dir, tempfile.TemporaryDirectory() as files_only:
        tok = load_tokenizer(tok_dir)
        for name in TOKENIZER_FILES:  # a MODEL_DIR also holds weights: copy only the tokenizer
            if os.path.exists(os.path.join(tok_dir, name)):
                shutil.copy(os.path.join(tok_dir, name), files_only)
        train, val, counts = tokenize_documents(
            documents, tok, val_fraction=val_fraction, batch_docs=batch_docs, progress=progress
        )
        splits = {"train": train, "validation": val} if val_fraction > 0 else {"train": train}
        info = tokenizer_info(tok, tokenizer_src)
        extra = {"source": source, "val_fraction": val_fraction, "counts": counts}
        return store_lib.write_data_dir(
            out_dir,
            splits,
            vocab_size=len(tok),
            eos_id=tok.eos_token_id,
            bos_id=tok.bos_token_id,
            tokenizer=info,
            tokenizer_dir=files_only,
            extra=extra,
            overwrite=overwrite,
        )
