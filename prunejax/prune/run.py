"""`prune_model`: one pruning stage from a model source to a MODEL_DIR, as `prunejax prune` runs it.

The model is read by `prunejax.modelio.load` (MODEL_DIR, HF dir, RUN_DIR, gs:// MODEL_DIR or .gguf) and
pruned by `prunejax.prune.compose.prune`, which composes a sparse model's masks with a sparse method's,
carries them through a depth method, and refuses any other method on a sparse model (see that module).
Everything is validated before any work that writes; a model with a NaN/Inf weight is refused before
pruning and a pruned one before saving; the MODEL_DIR appears complete or not at all, with the provenance
of the stage (parent, method, options, requested and realized ratio, calibration data fingerprint).
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prunejax import calibrate, hf, locks, modelio, sharding, storage
from prunejax.config import LlamaConfig
from prunejax.data.store import TokenStore
from prunejax.modelio import Model
from prunejax.prune import compose, owl
from prunejax.prune.masks import PruneError, parse_pattern
from prunejax.prune.registry import NO_CALIBRATION, TRAINED, get_method
from prunejax.prune.shapes import parse_target

DEFAULT_MESH = "data=-1"  # every device on the batch axis: train's and eval's default mesh


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
    owl_options: dict[str, float | str | None],
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
        tuned = {"owl_m": owl.DEFAULT_M, "owl_lambda": owl.DEFAULT_LAMBDA, "owl_map": owl.DEFAULT_MAP}
        tuned.update({k: v for k, v in owl_options.items() if v is not None})
        owl.check_owl(ratio, n_m, **tuned)
        options.update(tuned)
    elif any(v is not None for v in owl_options.values()):
        raise PruneError(f"--owl-m/--owl-lambda/--owl-map apply to owl only, not {method}")
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


def summary(parent: LlamaConfig, pruned: Model) -> str:
    """A per-layer table for the terminal."""
    r, cfg = pruned.provenance["report"], pruned.cfg
    carried = "overall_ratio" in r  # a depth method on a sparse model: the survivors kept their masks
    how = "survivors keep the input's masks" if carried else "composed with the input's masks"
    lines = [
        f"method {r['method']}: requested ratio {r.get('requested_ratio')}, realized {r['realized_ratio']:.4f}",
        *([f"{how} (sparsity {r['input_sparsity']:.4f})"] if "input_sparsity" in r else []),
        *([f"removed or zeroed, overall: {r['overall_ratio']:.4f}"] if carried else []),
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
    owl_map: str | None = None,
    overwrite: bool = False,
) -> str:
    """Prune `model` (MODEL_DIR, HF dir, RUN_DIR or .gguf) with `method` at `ratio` or to `target` and write
    the MODEL_DIR `out`, which is returned; the flags of `prunejax prune` are its keywords."""
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
        owl_options={"owl_m": owl_m, "owl_lambda": owl_lambda, "owl_map": owl_map},
        overwrite=overwrite,
    )
    src = storage.local_dir(model)  # a gs:// MODEL_DIR: its committed local copy; `model` is recorded
    if os.path.isdir(src) and os.path.exists(os.path.join(src, hf.MASKS_FILE)):  # before the weights are read
        compose.check_composable(method, model, hf.MASKS_FILE)
    loaded = modelio.load(model, place=hf.on_host)  # host memory; calibration places a layer at a time
    cfg = loaded.cfg
    calib_seq_len = calib_seq_len or min(calibrate.DEFAULT_SEQ_LEN, cfg.max_position_embeddings)
    if calib is not None and calib_seq_len > cfg.max_position_embeddings:
        raise PruneError(
            f"--calib-seq-len {calib_seq_len} exceeds the model's max_position_embeddings "
            f"{cfg.max_position_embeddings} (train and eval refuse it too)"
        )
    tokens, fingerprint = (None, None)
    if calib is not None:
        hf.check_finite(loaded.params, model)  # before the calibration data is read
        tokens, fingerprint = load_calibration(calib, cfg, calib_samples, calib_seq_len)
    t0 = time.time()
    pruned = compose.prune(loaded, method, tokens, **options)
    seconds = time.time() - t0
    dtype = hf.DTYPES[cfg.torch_dtype]
    pruned = pruned.replace(params=jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), pruned.params))
    hf.check_finite(pruned.params, f"{method} result")
    provenance = {
        **pruned.provenance,
        "parent": storage.absolute(model),
        "parent_provenance": loaded.provenance,
        "options": {
            "pattern": pattern,
            "target": target,
            "calib_samples": calib_samples if tokens is not None else None,
            "calib_seq_len": calib_seq_len if tokens is not None else None,
            "batch_size": batch_size,
            "mesh": dict(options["mesh"].shape) if options["mesh"] is not None else None,
            **{k: options[k] for k in ("owl_m", "owl_lambda", "owl_map") if k in options},
        },
        "calibration": {"data_dir": storage.absolute(calib), "fingerprint": fingerprint} if calib else None,
        "seconds": round(seconds, 1),
    }
    # compose.prune never drops masks; zeros that an input without masks had are that input's own
    dense_input = loaded.masks is None
    written = modelio.save(out, pruned.replace(provenance=provenance), allow_dense=dense_input, overwrite=overwrite)
    print(summary(cfg, pruned))
    print(f"wrote {out} in {seconds:.1f}s of pruning")
    return written
