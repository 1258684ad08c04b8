"""`prunejax data prepare|index|train-tokenizer|info`: text or pre-tokenized ArrayRecord -> DATA_DIR, a small
BPE for tiny models, a summary."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prunejax import distributed, storage
from prunejax.data.build import val_every, work_dir
from prunejax.data.index import RECORD_DTYPES, index_array_records
from prunejax.data.prepare import default_workers, prepare
from prunejax.data.sources import CORPORA, corpus_documents, corpus_files, corpus_names, expand_files, read_files
from prunejax.data.store import DataError, TokenStore
from prunejax.distributed import add_launch_args


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


def _corpus_name(name: str) -> str:
    try:
        corpus_names(name)
    except DataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", nargs="+", help="text/.jsonl/.parquet files or globs (.gz/.zst ok)")
    p.add_argument(
        "--corpus",
        type=_corpus_name,
        metavar="NAME[+NAME...]",
        help=f"a built-in corpus ({', '.join(CORPORA)}), or a mix of them joined by +",
    )
    p.add_argument("--corpus-path", help="where the corpus lives when it is not found automatically")
    p.add_argument("--field", default="text", help="JSONL/parquet text field (default: text)")
    p.add_argument("--max-documents", type=int, default=0, help="stop after this many documents (0 = all)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunejax data", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("prepare", help="tokenize text into a DATA_DIR")
    _add_source_args(p)
    p.add_argument("--tokenizer", required=True, help="tokenizer dir, MODEL_DIR, HF dir or .gguf")
    p.add_argument("--out", required=True, help="DATA_DIR to write")
    p.add_argument("--val-fraction", type=float, default=0.05, help="documents held out: 1 in 1/F (rounded half up)")
    p.add_argument("--batch-docs", type=int, default=256, help="documents per tokenizer batch")
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="tokenizer processes (default: CPUs, at most 8; 1 = in this process on the tokenizer's threads)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT; discard a partial run of other arguments")

    x = sub.add_parser("index", help="build a DATA_DIR from ArrayRecord files of pre-tokenized documents")
    x.add_argument("--array-record", nargs="+", required=True, help="ArrayRecord files or globs, a document a record")
    x.add_argument("--tokenizer", required=True, help="the tokenizer of the ids: dir, MODEL_DIR, HF dir or .gguf")
    x.add_argument("--out", required=True, help="DATA_DIR to write")
    v = x.add_mutually_exclusive_group()
    v.add_argument("--val-fraction", type=float, default=0.05, help="records held out: 1 in 1/F (rounded half up)")
    v.add_argument("--val-files", nargs="+", default=[], help="ArrayRecord files that form the validation split")
    x.add_argument("--feature", help="tf.train.Example int64 feature holding the ids (default: the only one)")
    x.add_argument(
        "--record-dtype",
        choices=["example", *RECORD_DTYPES],
        default="example",
        help="records are tf.train.Examples (default) or raw little-endian integers of this type",
    )
    x.add_argument(
        "--no-append-eos",
        dest="append_eos",
        action="store_false",
        help="keep records as they are (default: append EOS where a record does not end with it)",
    )
    x.add_argument("--overwrite", action="store_true", help="replace OUT; discard a partial run of other arguments")

    t = sub.add_parser("train-tokenizer", help="train a small byte-level BPE")
    _add_source_args(t)
    t.add_argument("--vocab-size", type=int, default=512)
    t.add_argument("--out", required=True, help="tokenizer directory to write")
    t.add_argument("--overwrite", action="store_true")

    i = sub.add_parser("info", help="print a DATA_DIR's meta.json summary")
    i.add_argument("data_dir")
    for s in (p, x, t, i):
        add_launch_args(s)

    return parser


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
    """`prunejax data prepare`: tokenize text files or a corpus into the DATA_DIR `out`, which is returned."""
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
    """`prunejax data train-tokenizer`: a byte-level BPE of text files or a corpus, written to `out` (returned)."""
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
    """`prunejax data index`: a DATA_DIR `out` (returned) of ArrayRecord files of pre-tokenized documents."""
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
    its marker, and the staging copy removed."""

    remote = storage.is_remote(out)
    local = storage.staging_dir(out) if remote else out

    def build_to() -> None:
        if remote:
            storage.check_free(out, overwrite)
        build(local)
        if remote:
            storage.publish(local, out, overwrite=overwrite)
            shutil.rmtree(local)
            print(f"committed {out}")

    try:
        distributed.one_writer(f"data {cmd}", build_to)
    except KeyboardInterrupt:
        # re-raised, not an exit status: a study calls this in-process and must stop, not log a failed stage
        if cmd in ("prepare", "index") and os.path.exists(work_dir(local)):
            print(f"interrupted: run the same command again to resume from {work_dir(local)}", file=sys.stderr)
        raise
    return out


def info(data_dir: str) -> dict[str, Any]:
    """`prunejax data info`: a DATA_DIR's meta.json without its shard list, and its token count per split."""
    store = TokenStore(data_dir)
    summary = {k: v for k, v in store.meta.items() if k != "splits"}
    summary["tokens"] = {s: store.num_tokens(s) for s in store.splits()}
    return summary


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "info":
        print(json.dumps(info(args.data_dir), indent=2))
        return 0
    if args.cmd == "index":
        index_data(
            args.out,
            array_record=args.array_record,
            tokenizer=args.tokenizer,
            val_fraction=args.val_fraction,
            val_files=args.val_files,
            feature=args.feature,
            record_dtype=args.record_dtype,
            append_eos=args.append_eos,
            overwrite=args.overwrite,
        )
        return 0
    source = {
        "text": args.text or (),
        "corpus": args.corpus,
        "corpus_path": args.corpus_path,
        "field": args.field,
        "max_documents": args.max_documents,
    }
    if args.cmd == "prepare":
        prepare_data(
            args.out,
            tokenizer=args.tokenizer,
            **source,
            val_fraction=args.val_fraction,
            batch_docs=args.batch_docs,
            workers=args.workers,
            overwrite=args.overwrite,
        )
    else:
        train_tokenizer(args.out, **source, vocab_size=args.vocab_size, overwrite=args.overwrite)
    return 0
