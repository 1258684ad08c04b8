"""`prepare`: documents -> token ids (EOS after each document) -> a DATA_DIR with a held-out split.

Documents are tokenized in batches, either in this process by the Rust fast tokenizer
(`encode_batch`, on all cores through its own thread pool) or by `workers` spawned processes, each
loading the tokenizer once and tokenizing whole batches on one thread. Results come back in order,
so the output is byte-identical whatever the worker count, and at most two batches per worker are
in flight, so memory holds a bounded number of batches, never the corpus (input that fits in that
first window is tokenized in-process: starting the processes would cost more). Every k-th document
(k = 1/val_fraction rounded half up, `build.val_every`) goes to the validation split: the assignment
is deterministic, spread over the whole corpus, and independent of batch sizes. Writing is resumable
(`build`).
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import signal
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from prunejax.data import store as store_lib
from prunejax.data.build import Batch, build_data_dir, file_stamps, files_digest, validation_rule
from prunejax.data.store import SHARD_TOKENS, DataError
from prunejax.data.tokenizer import load_tokenizer, tokenizer_dir, tokenizer_files, tokenizer_info

_WORKER: tuple[Any, int] | None = None  # (tokenizer, EOS id) of a pool worker process


def default_workers() -> int:
    """Tokenizer processes when not told: the CPUs this process may use, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cpus, 8)


def _batches(documents: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in documents:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode(batch: list[str], tokenizer: Any, eos_id: int) -> Batch:
    """Token ids of `batch` with EOS after each document, and each document's token count."""
    encodings = tokenizer.encode_batch(batch, add_special_tokens=False)
    docs = [np.append(np.asarray(e.ids, np.int32), np.int32(eos_id)) for e in encodings]
    return np.concatenate(docs), np.asarray([len(d) for d in docs], np.int64)


def _init_worker(tokenizer_json: str, eos_id: int) -> None:
    """Pool initializer: load the tokenizer once per process; Ctrl-C is left to the parent."""
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    from tokenizers import Tokenizer

    _WORKER = (Tokenizer.from_str(tokenizer_json), eos_id)


def _encode_in_worker(batch: list[str]) -> Batch:
    assert _WORKER is not None, "_init_worker did not run"
    return encode(batch, *_WORKER)


def encode_batches(documents: Iterable[str], tok: Any, *, batch_docs: int = 256, workers: int = 1) -> Iterator[Batch]:
    """`encode` over batches of `batch_docs` documents, in order, in this process or `workers` processes."""
    batches = _batches(documents, batch_docs)
    if workers > 1:
        # starting processes costs seconds: input that fits in the first window is tokenized here
        head = list(itertools.islice(batches, 2 * workers))
        if len(head) == 2 * workers:
            yield from _encode_in_pool(itertools.chain(head, batches), tok, workers)
            return
        batches = iter(head)
    for batch in batches:
        yield encode(batch, tok.backend_tokenizer, tok.eos_token_id)


def _encode_in_pool(batches: Iterator[list[str]], tok: Any, workers: int) -> Iterator[Batch]:
    # spawn: forking a process that runs JAX or the tokenizer's threads is unsafe
    init = (tok.backend_tokenizer.to_str(), tok.eos_token_id)
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, init) as pool:
        # Pool.imap would read the documents into its task queue as fast as it can; a window of two
        # batches per worker bounds memory and keeps results in order.
        pending: collections.deque = collections.deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_in_worker, (batch,)))
            if len(pending) == 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def prepare(
    documents: Iterable[str],
    tokenizer_src: str,
    out_dir: str,
    *,
    val_fraction: float = 0.05,
    batch_docs: int = 256,
    workers: int = 1,
    source: str = "",
    inputs: Sequence[str] = (),
    field: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    commit_seconds: float = 10.0,
    shard_tokens: int = SHARD_TOKENS,
) -> str:
    """Tokenize `documents` with the tokenizer at `tokenizer_src` and write a DATA_DIR at `out_dir`.

    An interrupted run is resumed when called again with the same arguments and the same documents:
    `source` names them, `inputs` lists the files they are read from (their sizes and modification
    times must match) and `field` is the JSONL/parquet field they were read by.
    """
    is_validation = validation_rule(val_fraction)
    if workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    with tokenizer_dir(tokenizer_src) as tok_dir:
        tok = load_tokenizer(tok_dir)
        files = tokenizer_files(tok_dir)
        info = tokenizer_info(tok, tokenizer_src)
        meta = store_lib.new_meta(
            len(tok), tok.eos_token_id, tok.bos_token_id, info, {"source": source, "val_fraction": val_fraction}
        )
        fingerprint = {
            "source": source,
            "inputs": file_stamps(inputs),
            "field": field,
            "tokenizer": files_digest(files),
            "val_fraction": val_fraction,
        }

        def batches(skip: int) -> Iterator[Batch]:
            docs = itertools.islice(documents, skip, None)
            return encode_batches(docs, tok, batch_docs=batch_docs, workers=workers)

        return build_data_dir(
            out_dir,
            batches,
            meta,
            fingerprint=fingerprint,
            is_validation=is_validation,
            tokenizer_files=files,
            overwrite=overwrite,
            progress="tokenizing" if progress else None,
            commit_seconds=commit_seconds,
            shard_tokens=shard_tokens,
        )
