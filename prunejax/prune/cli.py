"""`prunejax prune`: prune a MODEL_DIR (or HF dir / GGUF) with one method and write a MODEL_DIR.

  prunejax prune --model SRC --method M (--ratio R | --target hidden=..,ffn=..,layers=..,heads=..)
                 [--pattern N:M] --calib DATA_DIR [--calib-samples N] [--calib-seq-len L]
                 [--owl-m M] [--owl-lambda L]
                 [--mesh data=N,fsdp=M,tp=K] --out MODEL_DIR [--overwrite]
  sheared trains its masks instead: --data DATA_DIR --prune-tokens N [--sheared-config YAML] [--run-dir DIR]
                 [--seed S]; with --run-dir it resumes, and SIGINT/SIGTERM save a checkpoint and exit
                 130/143, as `prunejax train` does

Calibration reads the first N x L tokens of the DATA_DIR's train split; each batch is split over
the mesh's data x fsdp devices (default data=-1: every device, as train and eval do). Everything
is validated before any work that writes; a model with a NaN/Inf weight is refused before pruning and
a pruned one before saving; the MODEL_DIR appears complete or not at all.

A sparse MODEL_DIR (with masks.safetensors) is pruned again only by a sparse method: the new masks are
the old AND the method's (a weight pruned once stays pruned), and the realized ratio is that of the
composition (a --ratio below the input's sparsity realizes at least the input's). Structured methods
refuse a sparse model: their result carries no masks (a retrain would regrow the zeroed weights) and
one ratio cannot mix removed and zeroed weights; prune structurally first, then sparsify.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prunejax import calibrate, hf, locks, sharding, storage
from prunejax.config import LlamaConfig
from prunejax.data.store import TokenStore
from prunejax.distributed import add_launch_args
from prunejax.prune import owl
from prunejax.prune.masks import PruneError, parse_pattern
from prunejax.prune.registry import METHODS, NO_CALIBRATION, SPARSE, TRAINED, get_method
from prunejax.prune.result import PruneResult, composed_result
from prunejax.prune.shapes import parse_target
from prunejax.train.cli import STOPPED_BASE
from prunejax.train.loop import Stopped
from prunejax.tree import apply_masks

DEFAULT_MESH = "data=-1"  # every device on the batch axis: train's and eval's default mesh


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


def _options(
    model: str,
    method: str,
    *,
    out: str,
    ratio: float | None,
    target: str | None,
    pattern: str | None,
    calib: str | None,
    calib_shape: tuple[int, int | None],
    batch_size: int,
    mesh: str | jax.sharding.Mesh | None,
    trained: dict[str, Any],
    owl_options: dict[str, float | None],
    overwrite: bool,
) -> dict[str, Any]:
    """Validated method options, before anything heavy is loaded."""
    get_method(method)
    if (ratio is None) == (target is None):  # argparse says so for the CLI; this is for callers of prune_model
        raise PruneError("give exactly one of --ratio or --target")
    n_m = parse_pattern(pattern)
    shape = parse_target(target) if target is not None else None
    if ratio is not None and not 0.0 < ratio < 1.0:
        raise PruneError(f"--ratio must be in (0, 1), got {ratio}")
    if batch_size < 1:
        raise PruneError(f"--batch-size must be positive, got {batch_size}")
    if calib is None and method not in NO_CALIBRATION:
        raise PruneError(f"{method} needs calibration data: give --calib DATA_DIR")
    samples, seq_len = calib_shape
    if samples < 1:
        raise PruneError(f"--calib-samples must be at least 1, got {samples}")
    if seq_len is not None and seq_len < 2:
        raise PruneError(f"--calib-seq-len must be at least 2 (an input and its next token), got {seq_len}")
    storage.refuse_input(out, model, "--model")
    storage.refuse_existing(out, overwrite)
    if isinstance(mesh, jax.sharding.Mesh):
        placed = mesh
    elif mesh is not None:
        placed = sharding.parse_mesh(mesh)
    elif method in TRAINED:
        placed = None  # sheared trains on the mesh its config names (mesh_data, mesh_fsdp, mesh_tp)
    else:
        placed = sharding.parse_mesh(DEFAULT_MESH)
    options = {"ratio": ratio, "target": shape, "pattern": n_m, "batch_size": batch_size, "mesh": placed}
    if method == "owl":
        tuned = {"owl_m": owl.DEFAULT_M, "owl_lambda": owl.DEFAULT_LAMBDA}
        tuned.update({k: v for k, v in owl_options.items() if v is not None})
        owl.check_owl(ratio, n_m, tuned["owl_m"], tuned["owl_lambda"])
        options.update(tuned)
    elif any(v is not None for v in owl_options.values()):
        raise PruneError(f"--owl-m/--owl-lambda apply to owl only, not {method}")
    if method in TRAINED:
        if trained["data"] is None or trained["prune_tokens"] is None:
            raise PruneError(f"{method} trains its masks: give --data DATA_DIR and --prune-tokens N")
        return {**options, **trained}
    if any(v is not None for v in trained.values()):
        raise PruneError(
            f"--data/--prune-tokens/--sheared-config/--run-dir/--seed apply to {', '.join(sorted(TRAINED))} only"
        )
    return options


def load_calibration(data_dir: str, cfg: LlamaConfig, samples: int, seq_len: int) -> tuple[np.ndarray, str]:
    """Calibration tokens [N, L] and the DATA_DIR fingerprint; token ids must fit the model's vocabulary."""
    tokens = calibrate.calibration_tokens(data_dir, samples, seq_len)
    if tokens.max() >= cfg.vocab_size:
        raise calibrate.CalibrationError(
            f"{data_dir}: token id {int(tokens.max())} is outside the model's vocabulary of {cfg.vocab_size}"
        )
    return tokens, TokenStore(data_dir).fingerprint


def summary(parent: LlamaConfig, result: PruneResult) -> str:
    """A per-layer table for the terminal."""
    r, cfg = result.report, result.cfg
    lines = [
        f"method {r['method']}: requested ratio {r.get('requested_ratio')}, realized {r['realized_ratio']:.4f}",
        *([f"composed with the input's masks (sparsity {r['input_sparsity']:.4f})"] if "input_sparsity" in r else []),
        f"shape: layers {parent.num_hidden_layers}->{cfg.num_hidden_layers}, hidden {parent.hidden_size}->"
        f"{cfg.hidden_size}, ffn {parent.intermediate_size}->{cfg.intermediate_size}, heads "
        f"{parent.num_attention_heads}/{parent.num_key_value_heads}->{cfg.num_attention_heads}/{cfg.num_key_value_heads}",
        f"parameters {parent.num_params():,} -> {cfg.num_params():,}",
    ]
    if "per_layer" in r:
        lines.append("layer  sparsity")
        lines += [f"{k:>5}  {v:.4f}" for k, v in sorted(r["per_layer"].items(), key=lambda kv: int(kv[0]))]
    if "removed_layers" in r:
        lines.append(f"removed layers {r['removed_layers']}")
        scores = r.get("block_influence") or r.get("block_losses") or {}
        name = "block influence" if "block_influence" in r else "loss without block starting here"
        lines += [f"{k:>5}  {name} {v:.4f}" for k, v in sorted(scores.items(), key=lambda kv: int(kv[0]))]
    return "\n".join(lines)


@locks.writes("out")  # one writer per MODEL_DIR, from the option checks to the commit
def prune_model(
    model: str,
    method: str,
    *,
    out: str,
    ratio: float | None = None,
    target: str | None = None,
    pattern: str | None = None,
    calib: str | None = None,
    calib_samples: int = calibrate.DEFAULT_SAMPLES,
    calib_seq_len: int | None = None,
    batch_size: int = 8,
    mesh: str | jax.sharding.Mesh | None = None,
    data: str | None = None,
    prune_tokens: int | None = None,
    sheared_config: str | None = None,
    run_dir: str | None = None,
    seed: int | None = None,
    owl_m: float | None = None,
    owl_lambda: float | None = None,
    overwrite: bool = False,
) -> str:
    """Prune `model` (MODEL_DIR, HF dir or .gguf) with `method` at `ratio` or to `target` and write the
    MODEL_DIR `out`, which is returned; the flags of `prunejax prune` are its keywords (see the module doc)."""
    trained = {"data": data, "prune_tokens": prune_tokens, "config": sheared_config, "run_dir": run_dir, "seed": seed}
    options = _options(
        model,
        method,
        out=out,
        ratio=ratio,
        target=target,
        pattern=pattern,
        calib=calib,
        calib_shape=(calib_samples, calib_seq_len),
        batch_size=batch_size,
        mesh=mesh,
        trained=trained,
        owl_options={"owl_m": owl_m, "owl_lambda": owl_lambda},
        overwrite=overwrite,
    )
    from prunejax.convert import load_any

    src = storage.local_dir(model)  # a gs:// MODEL_DIR: its committed local copy; `model` is recorded
    sparse_input = os.path.isdir(src) and os.path.exists(os.path.join(src, hf.MASKS_FILE))
    if sparse_input and method not in SPARSE:  # before the weights are read
        raise PruneError(
            f"{model} is sparse ({hf.MASKS_FILE}): {method} removes whole rows, heads or layers and "
            f"would drop those masks; prune structurally first and sparsify after, or use a sparse method "
            f"({', '.join(sorted(SPARSE))})"
        )
    cfg, params = load_any(src, place=hf.on_host)  # host memory; calibration places a layer at a time
    hf.check_finite(params, model)  # magnitude would pass a NaN through; calibration would fail late
    input_masks = hf.load_masks(src, cfg) if sparse_input else None
    if input_masks:
        params = apply_masks(params, input_masks)  # the method sees the sparse model the directory claims to be
    calib_seq_len = calib_seq_len or min(calibrate.DEFAULT_SEQ_LEN, cfg.max_position_embeddings)
    if calib is not None and calib_seq_len > cfg.max_position_embeddings:
        raise PruneError(
            f"--calib-seq-len {calib_seq_len} exceeds the model's max_position_embeddings "
            f"{cfg.max_position_embeddings} (train and eval refuse it too)"
        )
    tokens, fingerprint = (None, None)
    if calib is not None:
        tokens, fingerprint = load_calibration(calib, cfg, calib_samples, calib_seq_len)
    t0 = time.time()
    result = get_method(method)(cfg, params, tokens, **options)
    if input_masks:
        result = composed_result(result, input_masks)
    seconds = time.time() - t0
    requested = options["ratio"]
    result.report["requested_ratio"] = requested
    dtype = hf.DTYPES[cfg.torch_dtype]
    out_params = jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), result.params)
    hf.check_finite(out_params, f"{method} result")
    parent_provenance = hf.load_provenance(src) if os.path.isdir(src) else {}
    provenance = {
        "stage": "prune",
        "parent": storage.absolute(model),
        "parent_provenance": parent_provenance,
        "method": method,
        "options": {
            "pattern": pattern,
            "target": target,
            "calib_samples": calib_samples if tokens is not None else None,
            "calib_seq_len": calib_seq_len if tokens is not None else None,
            "batch_size": batch_size,
            "mesh": dict(options["mesh"].shape) if options["mesh"] is not None else None,
            **{k: options[k] for k in ("owl_m", "owl_lambda") if k in options},
        },
        "requested_ratio": requested,
        "realized_ratio": result.report["realized_ratio"],
        **({"input_sparsity": result.report["input_sparsity"]} if input_masks else {}),
        **({"prune_tokens": result.report["prune_tokens"]} if "prune_tokens" in result.report else {}),
        "calibration": {"data_dir": storage.absolute(calib), "fingerprint": fingerprint} if calib else None,
        "seconds": round(seconds, 1),
        "report": result.report,
    }
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer_dir = src if os.path.isdir(src) else None
        if model.endswith(".gguf"):
            from prunejax.gguf_import import save_gguf_tokenizer

            save_gguf_tokenizer(model, tok_dir)
            tokenizer_dir = tok_dir
        written = hf.save(
            out,
            result.cfg,
            out_params,
            result.masks,
            tokenizer_dir=tokenizer_dir,
            provenance=provenance,
            overwrite=overwrite,
        )
    print(summary(cfg, result))
    print(f"wrote {out} in {seconds:.1f}s of pruning")
    return written


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
        overwrite=args.overwrite,
    )


def main(argv: list[str]) -> int:
    try:
        run(parse_args(argv))
    except Stopped as e:  # a trained method's stage saved a checkpoint in --run-dir and stopped
        print(f"stopped at a checkpoint; run the same command again to resume {e.run_dir}")
        return STOPPED_BASE + e.signum  # as `prunejax train`: 130 on Ctrl-C, 143 on SIGTERM
    return 0
