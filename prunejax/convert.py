"""`prunejax convert SRC --out DIR`: an HF directory or a Llama GGUF becomes a MODEL_DIR.

A sparse MODEL_DIR's masks.safetensors comes along (and is applied to the written weights)."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from prunejax import hf, locks, modelio, storage
from prunejax.distributed import add_launch_args


@locks.writes("out_dir")  # one writer per MODEL_DIR
def convert(src: str, out_dir: str, *, dtype: str | None = None, overwrite: bool = False) -> str:
    """Write `src` as a MODEL_DIR at `out_dir`, tokenizer and masks included; `dtype` casts the weights."""
    storage.refuse_input(out_dir, src, "SRC")
    model = modelio.load(src)  # a sparse MODEL_DIR stays sparse: its masks come along, applied
    if dtype is not None:
        model = model.replace(params=jax.tree.map(lambda x: x.astype(jnp.dtype(hf.DTYPES[dtype])), model.params))
    provenance = {"source": storage.absolute(src), "stage": "convert"}
    if model.provenance:
        provenance["source_provenance"] = model.provenance
    # a checkpoint without masks is converted as it is, whatever the zeros in its weights
    return modelio.save(out_dir, model.replace(provenance=provenance), allow_dense=True, overwrite=overwrite)


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
