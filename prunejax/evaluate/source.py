"""What is evaluated: a model (MODEL_DIR, HF directory, RUN_DIR, GGUF, or a `Model` value) with its tokenizer
and masks.

A sparse MODEL_DIR stores its weights already zeroed; the masks in `masks.safetensors` are applied
again on load anyway (a no-op for a well-formed directory) so that a model whose weights were
edited after pruning is still evaluated as the sparse model it claims to be, and whether the
stored weights already agreed with the masks is recorded. A model with a NaN or Inf weight is refused.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax.numpy as jnp
from jax.sharding import Mesh

from prunejax import hf, modelio, storage
from prunejax.config import LlamaConfig
from prunejax.hf import Params
from prunejax.modelio import Model
from prunejax.sharding import placer, shard
from prunejax.tree import apply_masks, get_path, leaf_paths, sparsity


@dataclasses.dataclass
class EvalModel:
    cfg: LlamaConfig
    params: Params
    tokenizer: Any | None
    info: dict[str, Any]


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


def load_model(src: str | Model, *, mesh: Mesh | None = None, dtype: Any = jnp.float32) -> EvalModel:
    """Weights (masks applied, placed on `mesh`), tokenizer and provenance of a model to evaluate: read by
    `modelio.read` from a path, or taken as they are from a `Model` value (whose masks hold already)."""
    if isinstance(src, Model):
        model, info = src, {"path": src.source, "in_memory": True}
        model = model.replace(params=shard(mesh, model.params)) if mesh is not None else model
    else:
        local = modelio.resolve(src) if not storage.is_remote(src) else src
        info = {"path": src if storage.is_remote(src) else os.path.abspath(local)}
        model = modelio.read(src, dtype=dtype, place=placer(mesh) if mesh is not None else None)
    hf.check_finite(model.params, str(info["path"]))  # a NaN weight would only show up as a NaN metric
    provenance = model.provenance if not isinstance(src, Model) else {}
    if provenance:
        info["provenance"] = {k: provenance[k] for k in ("stage", "method", "parent", "source") if k in provenance}
    params = model.params
    if model.masks:
        already_zero = masked_are_zero(params, model.masks)
        params = apply_masks(params, model.masks)
        info["masks"] = {
            "applied": True,
            "weights_already_zero": already_zero,
            "mask_sparsity": sparsity(model.masks)["mask_sparsity"],
        }
    with modelio.tokenizer_files(model.source) as tok_dir:
        tokenizer = load_tokenizer(tok_dir) if tok_dir is not None else None
    return EvalModel(model.cfg, params, tokenizer, info)
