"""The gated Llama that Sheared-LLaMA trains, and the fold of its gates into a plain smaller Llama.

`masked_forward` is `prunejax.model.forward` with four gate groups multiplied in (see
`sheared_gates`): the layer gate scales both residual branches, the head gate scales each kv-group's
attention output before `o_proj`, the ffn gate scales the input of `down_proj`, and the hidden gate
scales the embedding and every branch output, so a closed channel stays exactly zero in the residual
stream. RMSNorm then averages over the open channels only, which is what the folded model computes.
With gates that are 0 or kept, `forward(fold(...))` equals `masked_forward` (tested).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prunejax.config import LlamaConfig
from prunejax.model import apply_rope, rope_tables
from prunejax.prune.keep import shrink, shrink_heads
from prunejax.prune.masks import PruneError
from prunejax.prune.sheared_gates import Gates

Params = dict[str, Any]


def _norm(x_BLD: jax.Array, weight_D: jax.Array, open_D: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the open hidden channels (closed ones are zero in x and do not count)."""
    x = x_BLD.astype(jnp.float32)
    mean_sq = jnp.sum(x * x * open_D, axis=-1, keepdims=True) / jnp.maximum(jnp.sum(open_D), 1.0)
    x = x * jax.lax.rsqrt(mean_sq + eps)
    return weight_D.astype(x_BLD.dtype) * x.astype(x_BLD.dtype)


def _attention(
    cfg: LlamaConfig, attn: Params, x_BLD: jax.Array, cos_LH: jax.Array, sin_LH: jax.Array, z_K: jax.Array
) -> jax.Array:
    dt = x_BLD.dtype
    q_BLNH = apply_rope(jnp.einsum("BLD,DNH->BLNH", x_BLD, attn["q_proj"].astype(dt)), cos_LH, sin_LH)
    k_BSKH = apply_rope(jnp.einsum("BSD,DKH->BSKH", x_BLD, attn["k_proj"].astype(dt)), cos_LH, sin_LH)
    v_BSKH = jnp.einsum("BSD,DKH->BSKH", x_BLD, attn["v_proj"].astype(dt))
    b, length, n, h = q_BLNH.shape
    k = cfg.num_key_value_heads
    q_BLKGH = q_BLNH.reshape(b, length, k, n // k, h)
    logits_BKGLS = jnp.einsum("BLKGH,BSKH->BKGLS", q_BLKGH, k_BSKH).astype(jnp.float32) * (1.0 / math.sqrt(h))
    causal_LS = jnp.tril(jnp.ones((length, length), dtype=bool))
    logits_BKGLS = jnp.where(causal_LS, logits_BKGLS, jnp.finfo(jnp.float32).min)
    probs_BKGLS = jax.nn.softmax(logits_BKGLS, axis=-1).astype(dt)
    out_BLKGH = jnp.einsum("BKGLS,BSKH->BLKGH", probs_BKGLS, v_BSKH) * z_K.astype(dt)[:, None, None]
    return jnp.einsum("BLNH,NHD->BLD", out_BLKGH.reshape(b, length, n, h), attn["o_proj"].astype(dt))


def _layer(
    cfg: LlamaConfig, lp: Params, x_BLD: jax.Array, rope: tuple[jax.Array, jax.Array], z: Gates, open_D: jax.Array
) -> jax.Array:
    """One gated decoder layer; `z` holds this layer's gates (layer scalar, heads [K], ffn [F], hidden [D])."""
    dt = x_BLD.dtype
    z_D = z["hidden"].astype(dt)
    h_BLD = _norm(x_BLD, lp["input_layernorm"], open_D, cfg.rms_norm_eps)
    attn_BLD = _attention(cfg, lp["self_attn"], h_BLD, *rope, z["heads"])
    x_BLD = x_BLD + z["layers"].astype(dt) * attn_BLD * z_D
    h_BLD = _norm(x_BLD, lp["post_attention_layernorm"], open_D, cfg.rms_norm_eps)
    mlp = lp["mlp"]
    gate_BLF = jnp.einsum("BLD,DF->BLF", h_BLD, mlp["gate_proj"].astype(dt))
    up_BLF = jnp.einsum("BLD,DF->BLF", h_BLD, mlp["up_proj"].astype(dt))
    hid_BLF = jax.nn.silu(gate_BLF) * up_BLF * z["ffn"].astype(dt)
    mlp_BLD = jnp.einsum("BLF,FD->BLD", hid_BLF, mlp["down_proj"].astype(dt))
    return x_BLD + z["layers"].astype(dt) * mlp_BLD * z_D


def masked_forward(
    cfg: LlamaConfig,
    params: Params,
    gates: Gates,
    tokens_BL: jax.Array,
    *,
    dtype: Any = jnp.float32,
    remat: bool = False,
) -> jax.Array:
    """Logits [B,L,V] in float32 of the gated model (gates: sampled or deterministic values)."""
    z_D = gates["hidden"]
    open_D = (z_D != 0).astype(jnp.float32)
    rope = rope_tables(cfg, jnp.arange(tokens_BL.shape[1]))
    x_BLD = jnp.take(params["embed_tokens"], tokens_BL, axis=0).astype(dtype) * z_D.astype(dtype)
    step = jax.checkpoint(_layer, static_argnums=(0,)) if remat else _layer
    for i in range(cfg.num_hidden_layers):
        z = {"layers": gates["layers"][i], "heads": gates["heads"][i], "ffn": gates["ffn"][i], "hidden": z_D}
        x_BLD = step(cfg, params["layers"][str(i)], x_BLD, rope, z, open_D)
    x_BLD = _norm(x_BLD, params["norm"], open_D, cfg.rms_norm_eps)
    w_DV = params["embed_tokens"].T if cfg.tie_word_embeddings else params["lm_head"]
    return jnp.einsum("BLD,DV->BLV", x_BLD, w_DV.astype(x_BLD.dtype)).astype(jnp.float32)


def _kept_rows(z: np.ndarray, name: str) -> dict[str, np.ndarray]:
    rows = {str(i): np.flatnonzero(row) for i, row in enumerate(z)}
    counts = sorted({len(v) for v in rows.values()})
    if len(counts) != 1 or counts[0] == 0:
        raise PruneError(f"fold: {name} gates keep {counts} units across layers; a Llama needs one count >= 1")
    return rows


def fold(cfg: LlamaConfig, params: Params, gates: Gates, keep: Gates | None = None) -> tuple[LlamaConfig, Params]:
    """The plain Llama computing what `masked_forward` computes with these gates: units outside
    `keep` (default: the nonzero gates) are removed, kept layer/head/ffn gate values are multiplied
    into `o_proj`/`down_proj`. Kept hidden gates must be 1, and every kept layer must keep the same
    number of heads and ffn neurons."""
    z = {g: np.asarray(jax.device_get(v), np.float32) for g, v in gates.items()}
    keep = {g: (z[g] != 0) if keep is None else np.asarray(keep[g], bool) for g in z}
    if np.any(z["hidden"][keep["hidden"]] != 1) or np.any(z["hidden"][~keep["hidden"]] != 0):
        raise PruneError(
            "fold: hidden gates must be 1 where kept, 0 elsewhere (RMSNorm is not linear in a channel scale)"
        )
    layers = np.flatnonzero(keep["layers"])
    hidden = np.flatnonzero(keep["hidden"])
    if layers.size == 0 or hidden.size == 0:
        raise PruneError("fold: the gates close every layer or every hidden channel")
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    new_layers = {}
    for new, old in enumerate(layers):
        lp = params["layers"][str(old)]
        z_N = np.repeat(z["heads"][old], group) * z["layers"][old]
        z_F = z["ffn"][old] * z["layers"][old]
        attn = {
            **lp["self_attn"],
            "o_proj": lp["self_attn"]["o_proj"] * jnp.asarray(z_N, lp["self_attn"]["o_proj"].dtype)[:, None, None],
        }
        mlp = {
            **lp["mlp"],
            "down_proj": lp["mlp"]["down_proj"] * jnp.asarray(z_F, lp["mlp"]["down_proj"].dtype)[:, None],
        }
        new_layers[str(new)] = {**lp, "self_attn": attn, "mlp": mlp}
    out = {**params, "layers": new_layers}
    new_cfg = cfg.replace(num_hidden_layers=int(layers.size))
    new_cfg, out = shrink(new_cfg, out, "embed", hidden)
    new_cfg, out = shrink_heads(new_cfg, out, _kept_rows(keep["heads"][layers], "head"))
    new_cfg, out = shrink(new_cfg, out, "mlp", _kept_rows(keep["ffn"][layers], "ffn"))
    return new_cfg, out
