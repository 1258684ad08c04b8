"""`prunejax prune`: prune a MODEL_DIR (or HF dir / GGUF) with one method and write a MODEL_DIR.

  prunejax prune --model SRC --method M (--ratio R | --target hidden=..,ffn=..,layers=..,heads=..)
                 [--pattern N:M] --calib DATA_DIR [--calib-samples N] [--calib-seq-len L]
                 [--owl-m M] [--owl-lambda L] [--owl-map MAP]
                 [--mesh data=N,fsdp=M,tp=K] --out MODEL_DIR [--overwrite]
  sheared trains its masks instead: --data DATA_DIR --prune-tokens N [--sheared-config YAML] [--run-dir DIR]
                 [--seed S]; with --run-dir it resumes, and SIGINT/SIGTERM save a checkpoint and exit
                 130/143, as `prunejax train` does

Calibration reads the first N x L tokens of the DATA_DIR's train split; each batch is split over
the mesh's data x fsdp devices (default data=-1: every device, as train and eval do). Everything
is validated before any work that writes; a model with a NaN/Inf weight is refused before pruning and
a pruned one before saving; the MODEL_DIR appears complete or not at all.

A sparse MODEL_DIR (with masks.safetensors) pruned again by a sparse method gets the old masks AND the
method's (a weight pruned once stays pruned), and the realized ratio is that of the composition (a --ratio
below the input's sparsity realizes at least the input's). A depth method keeps the surviving layers'
masks. Width, heads and Sheared refuse a sparse model (their result could not carry its masks); prune
structurally first, then sparsify. The work is `prunejax.prune.run.prune_model`; this module parses flags.
"""

from __future__ import annotations

import argparse

from prunejax import calibrate
from prunejax.distributed import add_launch_args
from prunejax.prune import owl
from prunejax.prune.registry import METHODS
from prunejax.prune.run import DEFAULT_MESH, prune_model
from prunejax.train.loop import Stopped


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prunejax prune", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--model", required=True, help="MODEL_DIR, HF directory or .gguf file to prune")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(sorted(METHODS))}")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="fraction of projection weights to remove, in (0, 1)")
    how.add_argument("--target", help="explicit shape, e.g. hidden=3072,ffn=9216 or layers=16")
    p.add_argument("--pattern", help="N:M sparsity along the input axis, e.g. 2:4 (sparse methods)")
    p.add_argument(
        "--owl-m", type=float, help=f"owl: outliers are scores above M x the layer's mean (default {owl.DEFAULT_M:g})"
    )
    p.add_argument(
        "--owl-lambda",
        type=float,
        help=f"owl: the largest deviation of a layer's ratio from --ratio (default {owl.DEFAULT_LAMBDA:g})",
    )
    p.add_argument(
        "--owl-map",
        choices=owl.MAPS,
        help=f"owl: outlier ratios to layer ratios: bounded (every layer within ±λ) or range (the OWL authors' "
        f"and llm-compressor's, up to ±2λ) (default {owl.DEFAULT_MAP})",
    )
    p.add_argument("--calib", help="DATA_DIR whose train split calibrates (not needed by magnitude)")
    p.add_argument("--calib-samples", type=int, default=calibrate.DEFAULT_SAMPLES, help="calibration sequences")
    p.add_argument(
        "--calib-seq-len",
        type=int,
        help=f"tokens per sequence (default min({calibrate.DEFAULT_SEQ_LEN}, the model's max positions), as eval)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="sequences per calibration batch")
    p.add_argument(
        "--mesh",
        help=f"device mesh, e.g. data=2,fsdp=2,tp=2 (default {DEFAULT_MESH}; sheared: its config's mesh_* sizes)",
    )
    p.add_argument("--data", help="DATA_DIR whose train split a trained method (sheared) learns on")
    p.add_argument("--prune-tokens", type=int, help="token budget of a trained method's pruning stage")
    p.add_argument("--sheared-config", help="YAML of sheared settings (default: configs/prune/sheared.yaml values)")
    p.add_argument("--run-dir", help="checkpoints and metrics of a trained method; resumes if it has a checkpoint")
    p.add_argument("--seed", type=int, help="seed of a trained method (sheared: gate init and sampling)")
    p.add_argument("--out", required=True, help="MODEL_DIR to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    add_launch_args(p)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def run(args: argparse.Namespace) -> str:
    """The flags of `prunejax prune`, passed on to `prune_model`."""
    return prune_model(
        args.model,
        args.method,
        out=args.out,
        ratio=args.ratio,
        target=args.target,
        pattern=args.pattern,
        calib=args.calib,
        calib_samples=args.calib_samples,
        calib_seq_len=args.calib_seq_len,
        batch_size=args.batch_size,
        mesh=args.mesh,
        data=args.data,
        prune_tokens=args.prune_tokens,
        sheared_config=args.sheared_config,
        run_dir=args.run_dir,
        seed=args.seed,
        owl_m=args.owl_m,
        owl_lambda=args.owl_lambda,
        owl_map=args.owl_map,
        overwrite=args.overwrite,
    )


def main(argv: list[str]) -> int:
    try:
        run(parse_args(argv))
    except Stopped as e:  # a trained method's stage saved a checkpoint in --run-dir and stopped
        print(f"stopped at a checkpoint; run the same command again to resume {e.run_dir}")
        return 128 + e.signum  # the shell's code for death by signal N, as `prunejax train`
    return 0
