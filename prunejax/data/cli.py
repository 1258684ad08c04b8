"""`prunejax data prepare|index|train-tokenizer|info`: text or pre-tokenized ArrayRecord -> DATA_DIR, a small
BPE for tiny models, a summary."""

from __future__ import annotations

import argparse
import json

from prunejax.data.api import index_data, info, prepare_data, train_tokenizer
from prunejax.data.index import RECORD_DTYPES
from prunejax.data.prepare import default_workers
from prunejax.data.sources import CORPORA, corpus_names
from prunejax.data.store import DataError
from prunejax.distributed import add_launch_args


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
