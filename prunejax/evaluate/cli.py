"""`prunejax eval --model SRC (--data DATA_DIR | --text FILES...) [--tasks NAMES --task-data DIR] --out FILE`."""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp

from prunejax import sharding, storage
from prunejax.config import positive_int, token_arg
from prunejax.distributed import add_launch_args
from prunejax.evaluate import tasks
from prunejax.evaluate.results import DEFAULT_SEQ_LEN, evaluate_model, write_results
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


def evaluate(
    model: str,
    *,
    out: str,
    data: str | None = None,
    text: list[str] | None = None,
    task_names: list[str] | None = None,
    task_data: str | None = None,
    seq_len: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    dtype: Any = jnp.float32,
    mesh: jax.sharding.Mesh | None = None,
    overwrite: bool = False,
) -> str:
    """`evaluate_model` written to the results.json `out`, which is returned; an existing `out` is refused
    before, not after, the evaluation unless `overwrite`."""
    counts = {"--seq-len": seq_len, "--stride": stride, "--max-tokens": max_tokens, "--limit": limit}
    for flag, value in {**counts, "--batch-size": batch_size}.items():  # what the CLI's argparse types check
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    storage.refuse_existing(out, overwrite, directory=False)
    results = evaluate_model(
        model,
        data=data,
        text=text,
        task_names=task_names,
        task_data=task_data,
        seq_len=seq_len,
        stride=stride,
        max_tokens=max_tokens,
        limit=limit,
        batch_size=batch_size,
        dtype=dtype,
        mesh=mesh,
    )
    write_results(out, results, overwrite=overwrite)
    print("\n".join(summary(results)))
    print(f"wrote {out}")
    return out


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.data or args.text or args.tasks):
        parser.error("give --data DATA_DIR, --text FILES and/or --tasks NAMES")
    evaluate(
        args.model,
        out=args.out,
        data=args.data,
        text=args.text,
        task_names=tasks.parse_task_names(args.tasks) if args.tasks else None,
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
    return 0
