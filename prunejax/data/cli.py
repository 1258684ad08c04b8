"""`prunejax data prepare|index|train-tokenizer|info`: text or pre-tokenized ArrayRecord -> DATA_DIR, a small
BPE for tiny models, a summary."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
from collections.abc import Iterator

from prunejax import distributed, storage
from prunejax.data.build import val_every, work_dir
from prunejax.data.index import RECORD_DTYPES, index_array_records
from prunejax.data.prepare import default_workers, prepare
from prunejax.data.sources import CORPORA, corpus_documents, corpus_file, expand_files, read_files
from prunejax.data.store import DataError, TokenStore
from prunejax.distributed import add_launch_args


def _documents(args: argparse.Namespace) -> tuple[Iterator[str], str, list[str]]:
    """(documents, source name, the files they are read from)."""
    if bool(args.text) == bool(args.corpus):
        raise DataError("give exactly one of --text FILES... or --corpus NAME")
    if args.corpus:
        files = [corpus_file(args.corpus, args.corpus_path)]
        docs, source = corpus_documents(args.corpus, files[0]), f"corpus:{args.corpus}"
    else:
        files = expand_files(args.text)
        docs, source = read_files(files, args.field), "files:" + ",".join(args.text)
    if args.max_documents:
        docs = itertools.islice(docs, args.max_documents)
        source += f"[:{args.max_documents}]"
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


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", nargs="+", help="text/.jsonl/.parquet files or globs (.gz/.zst ok)")
    p.add_argument("--corpus", choices=sorted(CORPORA), help="a built-in corpus")
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


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    storage.refuse_remote(getattr(args, "corpus_path", None), "--corpus-path")
    for f in (getattr(args, "array_record", None) or []) + (getattr(args, "val_files", None) or []):
        storage.refuse_remote(f, "ArrayRecord file")
    try:
        if args.cmd == "info":
            return _run(args)
        # host work: one process builds, the others wait for it and then read the same DATA_DIR
        distributed.one_writer(f"data {args.cmd}", lambda: _run_to(args))
        return 0
    except KeyboardInterrupt:
        # re-raised, not an exit status: a study calls this in-process and must stop, not log a failed stage
        if args.cmd in ("prepare", "index") and os.path.exists(work_dir(args.out)):
            print(f"interrupted: run the same command again to resume from {work_dir(args.out)}", file=sys.stderr)
        raise


def _run_to(args: argparse.Namespace) -> None:
    """`_run`, and for a gs:// --out: built in a local staging directory (an interrupted build resumes
    there), then uploaded and committed by its marker, and the staging copy removed."""
    remote = args.out
    if not storage.is_remote(remote):
        _run(args)
        return
    storage.check_bucket(remote)
    storage.check_free(remote, args.overwrite)
    local = storage.staging_dir(remote)
    _run(argparse.Namespace(**{**vars(args), "out": local}))
    storage.publish(local, remote, overwrite=args.overwrite)
    shutil.rmtree(local)
    print(f"committed {remote}")


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "prepare":
        docs, source, files = _documents(args)
        out = prepare(
            docs,
            args.tokenizer,
            args.out,
            val_fraction=args.val_fraction,
            batch_docs=args.batch_docs,
            workers=args.workers,
            source=source,
            inputs=files,
            field=None if args.corpus else args.field,
            overwrite=args.overwrite,
        )
        _print_summary(out)
    elif args.cmd == "index":
        out = index_array_records(
            args.array_record,
            args.tokenizer,
            args.out,
            val_fraction=args.val_fraction,
            val_files=args.val_files,
            feature=args.feature,
            record_dtype=args.record_dtype,
            append_eos=args.append_eos,
            overwrite=args.overwrite,
        )
        _print_summary(out)
    elif args.cmd == "train-tokenizer":
        from prunejax.data.tokenizer import train_bpe

        docs, _, _ = _documents(args)
        out = train_bpe(docs, args.out, vocab_size=args.vocab_size, overwrite=args.overwrite)
        print(f"wrote {out}: byte-level BPE, vocab {args.vocab_size}")
    else:
        store = TokenStore(args.data_dir)
        summary = {k: v for k, v in store.meta.items() if k != "splits"}
        summary["tokens"] = {s: store.num_tokens(s) for s in store.splits()}
        print(json.dumps(summary, indent=2))
    return 0
