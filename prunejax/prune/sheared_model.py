"""The gated Llama that Sheared-LLaMA trains, and the fold of its gates into a plain smaller Llama.

The gated model is the model itself: `prunejax.model.forward` (and `token_nll`) with Sheared's four gate
groups (`sheared_gates`) as its `gates`, which the model multiplies in at the points its docstring names:
the layer gate scales both residual branches, the head gate each kv-group's attention output before
`o_proj`, the ffn gate the input of `down_proj`, and the hidden gate the embedding and every branch
output, so a closed channel stays exactly zero in the residual stream, and RMSNorm averages over the
open channels only, which is what the folded model computes. With gates that are 0 or kept,
`forward(fold(...))` equals `masked_forward` (tested).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prunejax import model
from prunejax.config import LlamaConfig
from prunejax.prune.keep import shrink, shrink_heads
from prunejax.prune.masks import PruneError
from prunejax.prune.sheared_gates import Gates

Params = dict[str, Any]


def masked_forward(
    cfg: LlamaConfig,
    params: Params,
    gates: Gates,
    tokens_BL: jax.Array,
    *,
    dtype: Any = jnp.float32,
    remat: bool = False,
    block: int | None = model.ATTN_BLOCK,
    attention: str = "auto",
) -> jax.Array:
    """Logits [B,L,V] in float32 of the gated model (gates: sampled or deterministic values): the model's
    own forward pass with the gates (`prunejax.model.forward`), with its attention implementation
    (`attention`, see `prunejax.kernels.attention`)."""
    return model.forward(
        cfg, params, tokens_BL, dtype=dtype, remat=remat, attn_block=block, attention=attention, gates=gates
    )


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
