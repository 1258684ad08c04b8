"""What is evaluated: a model (MODEL_DIR, HF directory, RUN_DIR or GGUF) with its tokenizer and masks.

A sparse MODEL_DIR stores its weights already zeroed; the masks in `masks.safetensors` are applied
again on load anyway (a no-op for a well-formed directory) so that a model whose weights were
edited after pruning is still evaluated as the sparse model it claims to be, and whether the
stored weights already agreed with the masks is recorded. A model with a NaN or Inf weight is refused.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import jax.numpy as jnp
from jax.sharding import Mesh

from prunejax import hf, storage
from prunejax.config import LlamaConfig
from prunejax.hf import CheckpointError, Params
from prunejax.sharding import placer, shard
from prunejax.tree import apply_masks, get_path, leaf_paths, sparsity


@dataclasses.dataclass
class EvalModel:
    cfg: LlamaConfig
    params: Params
    tokenizer: Any | None
    info: dict[str, Any]


def resolve(src: str) -> str:
    """A RUN_DIR evaluates its `final/` MODEL_DIR; anything else is used as given."""
    final = os.path.join(src, "final")
    if os.path.isdir(src) and not os.path.exists(os.path.join(src, "config.json")) and os.path.isdir(final):
        return final
    return src


def load_tokenizer(path: str) -> Any | None:
    """The HF tokenizer saved beside a model, or None when the directory has none."""
    if not any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    hf.check_no_remote_code(path)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def masked_are_zero(params: Params, masks: Params) -> bool:
    """Whether every masked-out weight of `params` is already zero."""
    return all(
        bool(jnp.all(jnp.where(jnp.asarray(m, bool), 0, get_path(params, p)) == 0)) for p, m in leaf_paths(masks)
    )


def load_model(src: str, *, mesh: Mesh | None = None, dtype: Any = jnp.float32) -> EvalModel:
    """Weights (masks applied, placed on `mesh`), tokenizer and provenance of a model to evaluate."""
    info: dict[str, Any] = {"path": src if storage.is_remote(src) else os.path.abspath(resolve(src))}
    src = resolve(storage.local_dir(src))  # a committed gs:// MODEL_DIR: its local copy
    if src.endswith(".gguf"):
        from prunejax.gguf_import import load_gguf, save_gguf_tokenizer

        cfg, params = load_gguf(src, dtype=dtype)
        hf.check_finite(params, src)
        params = shard(mesh, params) if mesh is not None else params
        with tempfile.TemporaryDirectory() as tok_dir:
            save_gguf_tokenizer(src, tok_dir)
            tokenizer = load_tokenizer(tok_dir)
        return EvalModel(cfg, params, tokenizer, info)
    if not os.path.isdir(src):
        raise CheckpointError(f"{src}: not a model directory, RUN_DIR or .gguf file")
    cfg, params = hf.load(src, dtype=dtype, place=placer(mesh) if mesh is not None else None)
    hf.check_finite(params, src)  # a NaN weight would only show up as a NaN metric
    provenance = hf.load_provenance(src)
    if provenance:
        info["provenance"] = {k: provenance[k] for k in ("stage", "method", "parent", "source") if k in provenance}
    masks = hf.load_masks(src, cfg)
    if masks:
        already_zero = masked_are_zero(params, masks)
        params = apply_masks(params, masks)
        info["masks"] = {
            "applied": True,
            "weights_already_zero": already_zero,
            "mask_sparsity": sparsity(masks)["mask_sparsity"],
        }
    return EvalModel(cfg, params, load_tokenizer(src), info)
