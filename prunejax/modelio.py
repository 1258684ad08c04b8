"""A model as one value, `Model(cfg, params, masks)`, and the one loader and saver of every model source.

`load` reads an HF directory or MODEL_DIR (local or gs://), a RUN_DIR (its `final/`) or a Llama `.gguf`,
masks included (`masks.safetensors`, applied to the weights: a Model's pruned weights are zero). `save`
writes a MODEL_DIR with its masks and tokenizer files, and refuses a model that is sparse but carries no
masks, which would be written dense and regrown by a retrain. `hf` and `gguf_import` are the two format
readers underneath; convert, prune, eval and the Python API read models through `load`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np

from prunejax import distributed, hf, storage
from prunejax.config import LlamaConfig
from prunejax.hf import CheckpointError, Params
from prunejax.prune.masks import projection_leaves
from prunejax.tree import apply_masks, get_path, leaf_paths, sparsity

# The largest fraction of exact zeros in the projection weights that a model without masks may have and
# still be saved as dense: trained and structurally pruned weights have next to none, a pruned sparse model
# the fraction it was pruned at.
DENSE_ZERO_LIMIT = 0.01
RECORDED_ON_WRITE = ("format", "software", "sparsity")


@dataclasses.dataclass(frozen=True)
class Model:
    """A Llama: its config, HF-named params, boolean masks (True = kept; None when dense), the source its
    tokenizer files come from, and the provenance of how it was made (written to prunejax.json on save)."""

    cfg: LlamaConfig
    params: Params
    masks: Params | None = None
    source: str | None = None
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def replace(self, **fields: Any) -> Model:
        return dataclasses.replace(self, **fields)

    def __repr__(self) -> str:  # the shape, not every weight (a notebook cell or an error message shows it)
        c = self.cfg
        masks = f"sparsity {sparsity(self.masks)['mask_sparsity']:.4f}" if self.masks else "None"
        return (
            f"Model({c.num_params():,} params: layers {c.num_hidden_layers}, hidden {c.hidden_size}, "
            f"ffn {c.intermediate_size}, heads {c.num_attention_heads}/{c.num_key_value_heads}; masks {masks}; "
            f"source {self.source})"
        )


def resolve(src: str) -> str:
    """A RUN_DIR stands for its `final/` MODEL_DIR; anything else is used as given."""
    final = os.path.join(src, "final")
    if os.path.isdir(src) and not os.path.exists(os.path.join(src, "config.json")) and os.path.isdir(final):
        return final
    return src


def read(source: str, *, dtype: Any = jnp.float32, place: hf.Place | None = None) -> Model:
    """The model at `source` as stored: its masks are returned but not applied (see `load`). `place(path,
    array)` puts each tensor as it is read (default: the default device; `hf.on_host` keeps host memory)."""
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"source must be a path (MODEL_DIR, HF dir, RUN_DIR or .gguf), got {type(source).__name__}")
    source = str(source)
    local = resolve(storage.local_dir(source))  # a committed gs:// MODEL_DIR: its local copy
    if local.endswith(".gguf"):
        from prunejax.gguf_import import load_gguf

        cfg, params = load_gguf(local, dtype=dtype, place=place)
        return Model(cfg, params, None, source=local)
    if not os.path.isdir(local):
        raise CheckpointError(f"{source}: not a model directory, RUN_DIR or .gguf file")
    cfg, params = hf.load(local, dtype=dtype, place=place)
    return Model(cfg, params, hf.load_masks(local, cfg), source=local, provenance=hf.load_provenance(local))


def load(source: str, *, dtype: Any = jnp.float32, place: hf.Place | None = None) -> Model:
    """The model at `source` (MODEL_DIR, HF dir, RUN_DIR, gs:// MODEL_DIR or .gguf) with its masks applied, so
    that it is the sparse model its directory claims to be even if its weights were edited after pruning."""
    model = read(source, dtype=dtype, place=place)
    return model.replace(params=apply_masks(model.params, model.masks)) if model.masks else model


def _count(x: Any) -> int:
    return int(np.sum(x)) if isinstance(x, np.ndarray) else int(distributed.to_host(jnp.sum(x)))


def zero_fraction(params: Params) -> float:
    """The fraction of exact zeros in the decoder layers' projection weights (the weights a ratio counts)."""
    zeros = total = 0
    for _, w in projection_leaves(params):
        zeros += _count(w == 0)
        total += int(np.prod(w.shape))
    return zeros / max(total, 1)


def check_masks_hold(params: Params, masks: Params) -> None:
    """A CheckpointError naming the first masked leaf whose pruned weights are not zero."""
    for path, m in leaf_paths(masks):
        if _count(jnp.where(jnp.asarray(m, bool), 0, get_path(params, path)) != 0):
            raise CheckpointError(
                f"weight {'/'.join(path)} is non-zero where its mask prunes it; apply the masks first "
                "(prunejax.load and prunejax.prune return models whose masks hold)"
            )


@contextlib.contextmanager
def tokenizer_files(source: str | None) -> Iterator[str | None]:
    """A directory holding `source`'s tokenizer files (rebuilt from a .gguf's vocabulary), or None."""
    if source is None:
        yield None
    elif source.endswith(".gguf"):
        from prunejax.gguf_import import save_gguf_tokenizer

        with tempfile.TemporaryDirectory() as tmp:
            save_gguf_tokenizer(source, tmp)
            yield tmp
    else:
        yield source if storage.is_remote(source) or os.path.isdir(source) else None


def save(
    out_dir: str,
    model: Model,
    *legacy: Any,
    provenance: dict[str, Any] | None = None,
    tokenizer_dir: str | None = None,
    allow_dense: bool = False,
    overwrite: bool = False,
    max_shard_bytes: int = 5 * 2**30,
) -> str:
    """Write `model` as a MODEL_DIR (masks.safetensors when it has masks, the tokenizer files of its source or
    of `tokenizer_dir`, `provenance` over the model's own in prunejax.json) and return `out_dir`. A model
    without masks whose projection weights are more than 1% zeros is refused (it would be saved dense, and a
    retrain would regrow the zeros) unless `allow_dense`. The old call `save(out_dir, cfg, params, masks)` is a
    TypeError that says how to write it now."""
    if isinstance(model, LlamaConfig) or legacy:  # the old save(out_dir, cfg, params, masks)
        raise TypeError(
            "prunejax.save(out_dir, model) takes a prunejax.Model; for a config and params write "
            "prunejax.save(out_dir, prunejax.Model(cfg, params, masks))"
        )
    if not isinstance(model, Model):
        raise TypeError(f"model must be a prunejax.Model, got {type(model).__name__}")
    if model.masks:
        check_masks_hold(model.params, model.masks)
    elif not allow_dense:
        zeros = zero_fraction(model.params)
        if zeros > DENSE_ZERO_LIMIT:
            raise CheckpointError(
                f"the model has no masks but {zeros:.1%} of its projection weights are zero: saved without masks it "
                "would be dense, and a retrain would regrow them; give its masks (Model(cfg, params, masks)) or "
                "allow_dense=True to save it as dense on purpose"
            )
    # the format, software and realized sparsity of what is written are recorded anew by hf.save
    record = {k: v for k, v in {**model.provenance, **(provenance or {})}.items() if k not in RECORDED_ON_WRITE}
    with tokenizer_files(tokenizer_dir or model.source) as tok_dir:
        return hf.save(
            out_dir,
            model.cfg,
            model.params,
            model.masks,
            tokenizer_dir=tok_dir,
            provenance=record,
            max_shard_bytes=max_shard_bytes,
            overwrite=overwrite,
        )
