"""`prunejax eval --model SRC (--data DATA_DIR | --text FILES...) [--tasks NAMES --task-data DIR] --out FILE`.

The work is `prunejax.evaluate` (`prunejax.api.evaluate`); this module parses flags and prints the summary."""

from __future__ import annotations

import argparse

import jax.numpy as jnp

from prunejax import sharding
from prunejax.api import evaluate
from prunejax.config import positive_int, token_arg
from prunejax.distributed import add_launch_args
from prunejax.evaluate import tasks
from prunejax.evaluate.results import DEFAULT_SEQ_LEN
from prunejax.hf import DTYPES


def summary(results: dict) -> list[str]:
    lines = [
        f"{src}: perplexity {r['perplexity']:.4f} ({r['scored_tokens']:,} tokens)"
        for src, r in results.get("perplexity", {}).items()
    ]
    if "validation_loss" in results:
        v = results["validation"]
        lines.append(
            f"validation loss {v['nll']:.4f} (perplexity {v['perplexity']:.4f}, {v['scored_tokens']:,} tokens)"
        )
    for name, r in results.get("tasks", {}).items():
        lines.append(f"{name}: acc {r['acc']:.4f} acc_norm {r['acc_norm']:.4f} -> {r['metric']} ({r['docs']} docs)")
    if "average" in results:
        lines.append(f"average {results['average']:.4f}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunejax eval", description=__doc__)
    parser.add_argument("--model", required=True, help="MODEL_DIR, HF directory, RUN_DIR or .gguf file")
    parser.add_argument("--data", help="DATA_DIR: validation loss on its validation split")
    parser.add_argument("--text", nargs="+", metavar="FILE", help="text files: perplexity of each")
    parser.add_argument("--tasks", help=f"comma-separated zero-shot tasks or 'all' ({', '.join(tasks.TASKS)})")
    parser.add_argument("--task-data", help="directory of task files: <task>.jsonl|parquet or <task>/<split>.*")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N documents of each task")
    parser.add_argument(
        "--seq-len", type=positive_int, help=f"window length (default min({DEFAULT_SEQ_LEN}, max positions))"
    )
    parser.add_argument(
        "--stride", type=positive_int, help="sliding windows advanced by this many tokens (default: --seq-len)"
    )
    parser.add_argument(
        "--max-tokens", type=token_arg, help="use at most this many validation tokens of --data (e.g. 64k)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="sequences per step (rounded up to the devices)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="compute dtype")
    parser.add_argument("--mesh", help="device mesh, e.g. data=4,fsdp=2 (default: every device on the batch axis)")
    parser.add_argument("--out", required=True, help="results.json to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_launch_args(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.data or args.text or args.tasks):
        parser.error("give --data DATA_DIR, --text FILES and/or --tasks NAMES")
    results = evaluate(
        args.model,
        out=args.out,
        data=args.data,
        text=args.text,
        tasks=tasks.parse_task_names(args.tasks) if args.tasks else None,
        task_data=args.task_data,
        seq_len=args.seq_len,
        stride=args.stride,
        max_tokens=args.max_tokens,
        limit=args.limit,
        batch_size=args.batch_size,
        dtype=jnp.dtype(DTYPES[args.dtype]),
        mesh=sharding.parse_mesh(args.mesh) if args.mesh else None,
        overwrite=args.overwrite,
    )
    print("\n".join(summary(results)))
    print(f"wrote {args.out}")
    return 0
