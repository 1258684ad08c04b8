"""`prunejax train`: a YAML config plus key=value overrides, a model source, a DATA_DIR and a token budget.

prunejax train --config YAML [key=value ...] (--init MODEL_DIR | --scratch SRC [--reinit])
               --data DATA_DIR --tokens N --out RUN_DIR

SIGINT/SIGTERM save a checkpoint and exit 130/143; the same command resumes.
"""

from __future__ import annotations

import argparse

from prunejax.config import token_arg
from prunejax.distributed import add_launch_args

STOPPED_BASE = 128  # a run stopped by signal N (a checkpoint saved, resumable) exits 128 + N


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunejax train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="train config overrides key=value")
    parser.add_argument("--config", help="train config YAML (configs/train/*.yaml); defaults: the paper's recipe")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--init", help="MODEL_DIR to retrain (its masks come along)")
    src.add_argument("--scratch", help="random init of this shape: MODEL_DIR, preset name, or model YAML/JSON")
    parser.add_argument("--reinit", action="store_true", help="keep a sparse MODEL_DIR's masks, re-init kept weights")
    parser.add_argument("--data", required=True, help="DATA_DIR")
    parser.add_argument("--tokens", required=True, type=token_arg, help="token budget (e.g. 200000, 400k, 50B)")
    parser.add_argument("--out", required=True, help="RUN_DIR (an existing one is resumed)")
    parser.add_argument("--teacher", help="teacher MODEL_DIR for distillation (with distill_alpha>0)")
    parser.add_argument("--no-progress", action="store_true")
    add_launch_args(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    from prunejax.train.run import train

    summary = train(
        args.out,
        data_dir=args.data,
        tokens=args.tokens,
        init=args.init,
        scratch=args.scratch,
        reinit=args.reinit,
        config=args.config,
        overrides=args.overrides,
        teacher=args.teacher,
        progress=not args.no_progress,
    )
    if summary["status"] == "stopped":
        print(f"stopped at a checkpoint; run the same command again to resume {args.out}")
        # the shell's 128 + signal (130 on Ctrl-C, 143 on SIGTERM), so `train && eval` stops here
        return STOPPED_BASE + summary["signal"] if summary.get("signal") else 0
    val = f", validation loss {summary['val_loss']:.4f}" if "val_loss" in summary else ""
    print(f"done: {summary['steps']:,} steps{val}; model in {summary['final']}")
    return 0
