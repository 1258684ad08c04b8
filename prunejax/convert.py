"""`prunejax convert SRC --out DIR`: an HF directory or a Llama GGUF becomes a MODEL_DIR.

A sparse MODEL_DIR's masks.safetensors comes along (and is applied to the written weights)."""

from __future__ import annotations

import argparse
import os
import tempfile

from prunejax import hf, locks, storage
from prunejax.config import LlamaConfig
from prunejax.distributed import add_launch_args
from prunejax.hf import Params


def load_any(src: str, *, place: hf.Place | None = None) -> tuple[LlamaConfig, Params]:
    """(cfg, params) from an HF directory, a MODEL_DIR or a `.gguf` file; `place` puts each tensor
    (default: on the default device; `hf.on_host` keeps them in host memory)."""
    if src.endswith(".gguf"):
        from prunejax.gguf_import import load_gguf

        return load_gguf(src, place=place)
    return hf.load(src, place=place)


@locks.writes("out_dir")  # one writer per MODEL_DIR
def convert(src: str, out_dir: str, *, dtype: str | None = None, overwrite: bool = False) -> str:
    """Write `src` as a MODEL_DIR at `out_dir`, tokenizer and masks included; `dtype` casts the weights."""
    import jax
    import jax.numpy as jnp

    storage.refuse_input(out_dir, src, "SRC")
    named = storage.absolute(src)  # what provenance records
    src = storage.local_dir(src)  # a committed gs:// MODEL_DIR: its local copy
    cfg, params = load_any(src)
    masks = hf.load_masks(src, cfg) if os.path.isdir(src) else None
    if masks:  # a sparse MODEL_DIR stays sparse: its masks come along, and hold on the written weights
        from prunejax.tree import apply_masks

        params = apply_masks(params, masks)
    if dtype is not None:
        params = jax.tree.map(lambda x: x.astype(jnp.dtype(hf.DTYPES[dtype])), params)
    provenance = {"source": named, "stage": "convert"}
    source_provenance = hf.load_provenance(src) if os.path.isdir(src) else {}
    if source_provenance:
        provenance["source_provenance"] = source_provenance
    if src.endswith(".gguf"):
        from prunejax.gguf_import import save_gguf_tokenizer

        with tempfile.TemporaryDirectory() as tok_dir:
            save_gguf_tokenizer(src, tok_dir)
            return hf.save(out_dir, cfg, params, tokenizer_dir=tok_dir, provenance=provenance, overwrite=overwrite)
    return hf.save(out_dir, cfg, params, masks, tokenizer_dir=src, provenance=provenance, overwrite=overwrite)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunejax convert", description=__doc__)
    parser.add_argument("src", help="HF directory (safetensors) or a Llama .gguf file")
    parser.add_argument("--out", required=True, help="MODEL_DIR to write")
    parser.add_argument("--dtype", choices=sorted(hf.DTYPES), help="cast weights (default: as read)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    add_launch_args(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = convert(args.src, args.out, dtype=args.dtype, overwrite=args.overwrite)
    cfg = hf.load_config(out)
    print(
        f"wrote {out}: {cfg.num_params():,} parameters, {cfg.num_hidden_layers} layers, "
        f"hidden {cfg.hidden_size}, FFN {cfg.intermediate_size}, "
        f"{cfg.num_attention_heads}/{cfg.num_key_value_heads} heads"
    )
    return 0
