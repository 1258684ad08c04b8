"""The data verb's library functions: `prepare_data`, `index_data`, `train_tokenizer` and `info`, which
`prunejax data` and the study call. Each writes its output on one process (the others wait for it), builds a
gs:// output in a local staging directory and commits it by its marker."""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prunejax import distributed, locks, storage
from prunejax.data.build import val_every, work_dir
from prunejax.data.index import index_array_records
from prunejax.data.prepare import default_workers, prepare
from prunejax.data.sources import corpus_documents, corpus_files, expand_files, read_files
from prunejax.data.store import DataError, TokenStore


def documents(
    text: Sequence[str] = (),
    corpus: str | None = None,
    *,
    corpus_path: str | None = None,
    field: str = "text",
    max_documents: int = 0,
) -> tuple[Iterator[str], str, list[str]]:
    """(documents, source name, the files they are read from) of text files or a built-in corpus."""
    if bool(text) == bool(corpus):
        raise DataError("give exactly one of --text FILES... or --corpus NAME")
    if corpus:
        files = corpus_files(corpus, corpus_path)
        docs, source = corpus_documents(corpus, files), f"corpus:{corpus}"
    else:
        files = expand_files(text)
        docs, source = read_files(files, field), "files:" + ",".join(text)
    if max_documents:
        docs = itertools.islice(docs, max_documents)
        source += f"[:{max_documents}]"
    return docs, source, files


def _print_summary(out: str) -> None:
    store = TokenStore(out)
    sizes = ", ".join(f"{s} {store.num_tokens(s):,}" for s in store.splits())
    print(f"wrote {out}: {sizes} tokens, vocab {store.vocab_size}, fingerprint {store.fingerprint}")
    counts, fraction = store.meta.get("counts"), store.meta.get("val_fraction")
    if counts and counts["validation_documents"]:
        held, docs = counts["validation_documents"], counts["documents"]
        rule = f"1 document in {val_every(fraction)} (--val-fraction {fraction})" if fraction else "the --val-files"
        print(f"validation: {rule}, {held:,} of {docs:,} held out ({held / docs:.1%})")


def prepare_data(
    out: str,
    *,
    tokenizer: str,
    text: Sequence[str] = (),
    corpus: str | None = None,
    corpus_path: str | None = None,
    field: str = "text",
    max_documents: int = 0,
    val_fraction: float = 0.05,
    batch_docs: int = 256,
    workers: int | None = None,
    overwrite: bool = False,
) -> str:
    """Tokenize text files or a corpus into the DATA_DIR `out`, which is returned."""
    storage.refuse_remote(corpus_path, "--corpus-path")

    def build(local: str) -> None:
        docs, source, files = documents(text, corpus, corpus_path=corpus_path, field=field, max_documents=max_documents)
        written = prepare(
            docs,
            tokenizer,
            local,
            val_fraction=val_fraction,
            batch_docs=batch_docs,
            workers=default_workers() if workers is None else workers,
            source=source,
            inputs=files,
            field=None if corpus else field,
            overwrite=overwrite,
        )
        _print_summary(written)

    return _write("prepare", out, overwrite, build)


def train_tokenizer(
    out: str,
    *,
    text: Sequence[str] = (),
    corpus: str | None = None,
    corpus_path: str | None = None,
    field: str = "text",
    max_documents: int = 0,
    vocab_size: int = 512,
    overwrite: bool = False,
) -> str:
    """A byte-level BPE of text files or a corpus, written to `out` (returned)."""
    storage.refuse_remote(corpus_path, "--corpus-path")

    def build(local: str) -> None:
        from prunejax.data.tokenizer import train_bpe

        docs, _, _ = documents(text, corpus, corpus_path=corpus_path, field=field, max_documents=max_documents)
        written = train_bpe(docs, local, vocab_size=vocab_size, overwrite=overwrite)
        print(f"wrote {written}: byte-level BPE, vocab {vocab_size}")

    return _write("train-tokenizer", out, overwrite, build)


def index_data(
    out: str,
    *,
    array_record: Sequence[str],
    tokenizer: str,
    val_fraction: float = 0.05,
    val_files: Sequence[str] = (),
    feature: str | None = None,
    record_dtype: str = "example",
    append_eos: bool = True,
    overwrite: bool = False,
) -> str:
    """A DATA_DIR `out` (returned) of ArrayRecord files of pre-tokenized documents."""
    for f in [*array_record, *val_files]:
        storage.refuse_remote(f, "ArrayRecord file")

    def build(local: str) -> None:
        written = index_array_records(
            list(array_record),
            tokenizer,
            local,
            val_fraction=val_fraction,
            val_files=list(val_files),
            feature=feature,
            record_dtype=record_dtype,
            append_eos=append_eos,
            overwrite=overwrite,
        )
        _print_summary(written)

    return _write("index", out, overwrite, build)


def _write(cmd: str, out: str, overwrite: bool, build: Callable[[str], None]) -> str:
    """`build(out)` on one process (the others wait for it and then read the same output). A gs:// `out` is
    built in a local staging directory (an interrupted build resumes there), then uploaded and committed by
    its marker, and the staging copy removed. A rerun after an upload was interrupted (objects without the
    marker) replaces them: an uncommitted directory is no one's result, and the lock says no one is writing."""

    remote = storage.is_remote(out)
    local = storage.staging_dir(out) if remote else out

    def build_to() -> None:
        if remote and storage.committed(out):
            storage.check_free(out, overwrite)
        elif remote:  # nothing, or what an interrupted upload left (no marker): `publish` replaces it
            storage.check_bucket(out)
        build(local)
        if remote:
            storage.publish(local, out, overwrite=overwrite)
            shutil.rmtree(local)
            print(f"committed {out}")

    try:
        with locks.hold(out):  # one writer per output directory (on gs://: a lease object)
            distributed.one_writer(f"data {cmd}", build_to)
    except KeyboardInterrupt:
        # re-raised, not an exit status: a study calls this in-process and must stop, not log a failed stage
        if cmd in ("prepare", "index") and os.path.exists(work_dir(local)):
            print(f"interrupted: run the same command again to resume from {work_dir(local)}", file=sys.stderr)
        raise
    return out


def info(data_dir: str) -> dict[str, Any]:
    """A DATA_DIR's meta.json without its shard list, and its token count per split."""
    store = TokenStore(data_dir)
    summary = {k: v for k, v in store.meta.items() if k != "splits"}
    summary["tokens"] = {s: store.num_tokens(s) for s in store.splits()}
    return summary
