"""Import Llama GGUF files (llama.cpp's format), dequantizing to float32: the GGUF reader under
`prunejax.modelio.load`, the loader of every model source.

llama.cpp's converter permutes the rows of q/k so that each head's two RoPE halves interleave;
HF's `rotate_half` layout needs them back in halves, so the permutation is undone here on import
(never baked elsewhere).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np

from prunejax.config import LlamaConfig
from prunejax.hf import CheckpointError, Params, params_from_tensors

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _reader(path: str) -> Any:
    import gguf  # optional dependency: pip install prunejax[gguf]

    if not os.path.exists(path):
        raise CheckpointError(f"{path}: file is missing")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from e


def _field(reader: Any, key: str, path: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise CheckpointError(f"{path}: GGUF metadata {key} is missing")
        return default
    return field.contents()


def config_from_gguf(reader: Any, path: str) -> LlamaConfig:
    arch = _field(reader, "general.architecture", path)
    if arch != "llama":
        raise CheckpointError(f"{path}: GGUF architecture is {arch!r}; prunejax imports 'llama' only")
    names = {t.name for t in reader.tensors}
    heads = int(_field(reader, "llama.attention.head_count", path))
    hidden = int(_field(reader, "llama.embedding_length", path))
    vocab = _field(reader, "llama.vocab_size", path, -1)
    if vocab == -1:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    if "llama.rope.scaling.type" in reader.fields:
        raise CheckpointError(f"{path}: GGUF rope scaling is not supported; convert from the HF checkpoint instead")
    return LlamaConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length", path)),
        num_hidden_layers=int(_field(reader, "llama.block_count", path)),
        num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv", path, heads)),
        head_dim=int(_field(reader, "llama.rope.dimension_count", path, hidden // heads)),
        max_position_embeddings=int(_field(reader, "llama.context_length", path)),
        rms_norm_eps=float(np.float32(_field(reader, "llama.attention.layer_norm_rms_epsilon", path))),
        rope_theta=float(_field(reader, "llama.rope.freq_base", path, 10000.0)),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id", path, -1)),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id", path, -1)),
        torch_dtype="float32",
    )


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleave of q/k rows ([out, in] layout)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's layout (the inverse of `unpermute_rope_rows`); used by tests to build GGUFs."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_tensors(reader: Any, cfg: LlamaConfig, path: str) -> Iterator[tuple[str, np.ndarray]]:
    from gguf import quants

    for t in reader.tensors:
        stem, _, kind = t.name.rpartition(".")
        if kind != "weight":
            raise CheckpointError(f"{path}: unexpected GGUF tensor {t.name}")
        if stem.startswith("blk."):
            _, idx, part = stem.split(".", 2)
            if part not in _LAYER_NAMES:
                raise CheckpointError(f"{path}: unexpected GGUF tensor {t.name}")
            name = f"model.layers.{idx}.{_LAYER_NAMES[part]}.weight"
        elif stem in _GLOBAL_NAMES:
            name = f"{_GLOBAL_NAMES[stem]}.weight"
        else:
            raise CheckpointError(f"{path}: unexpected GGUF tensor {t.name}")
        w = np.asarray(quants.dequantize(t.data, t.tensor_type), np.float32)
        w = w.reshape(tuple(int(x) for x in reversed(t.shape)))  # GGUF lists dims innermost first
        if name.endswith(".q_proj.weight"):
            w = unpermute_rope_rows(w, cfg.num_attention_heads)
        elif name.endswith(".k_proj.weight"):
            w = unpermute_rope_rows(w, cfg.num_key_value_heads)
        yield name, w


def load_gguf(path: str, *, dtype: Any = jnp.float32, place: Any = None) -> tuple[LlamaConfig, Params]:
    """(cfg, params) from a Llama GGUF; quantized tensors are dequantized to float32."""
    reader = _reader(path)
    cfg = config_from_gguf(reader, path)
    return cfg, params_from_tensors(cfg, _hf_tensors(reader, cfg, path), source=path, dtype=dtype, place=place)


def save_gguf_tokenizer(path: str, out_dir: str) -> None:
    """Rebuild the HF tokenizer from the GGUF vocabulary (transformers' own GGUF reader)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path), trust_remote_code=False
    )
    tok.save_pretrained(out_dir)
