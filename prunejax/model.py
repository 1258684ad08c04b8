"""Llama-3 as Flax NNX modules, exposed as pure functions over plain parameter dicts.

Legend for array suffixes and einsums:
  B batch   L query length   S key length   D embed (hidden)   V vocab
  N q-heads K kv-heads       G q-heads per kv-head (N = K*G)   H head-dim   F mlp (FFN)

Params are nested dicts whose paths mirror Hugging Face names:
  embed_tokens [V,D]; layers/<i>/self_attn/{q_proj [D,N,H], k_proj [D,K,H], v_proj [D,K,H],
  o_proj [N,H,D]}; layers/<i>/mlp/{gate_proj [D,F], up_proj [D,F], down_proj [F,D]};
  layers/<i>/{input_layernorm, post_attention_layernorm} [D]; norm [D]; lm_head [D,V] (untied only).
NNX objects never leave this module: callers see `(cfg, params)`.

Gates (optional, `forward(..., gates=)`): multipliers of the model's units, for methods that train
structured masks (Sheared-LLaMA's are `prunejax.prune.sheared_gates`), a dict of float arrays; all ones
is the plain model, and a zero removes its unit exactly as deleting the unit's weights would:
  layers [n_layers]    both residual branches of each layer
  heads  [n_layers,K]  each kv-group's attention output (its G q-heads), before o_proj
  ffn    [n_layers,F]  the input of down_proj
  hidden [D]           the embedding and every branch output; the norms average over its nonzero channels
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prunejax.config import LlamaConfig
from prunejax.kernels import attention as attention_kernels
from prunejax.kernels import cpu as cpu_kernels
from prunejax.kernels.attention import ATTN_BLOCK
from prunejax.sharding import constrain_batch, constrain_stacked

Params = dict[str, Any]
Gates = dict[str, jax.Array]  # the module docstring's gates; one layer's: its row of each per-layer group
_PER_LAYER_GATES = ("layers", "heads", "ffn")
INIT_STD = 0.02
LOSS_CHUNK = 1024  # positions per chunk of the LM head + log-softmax in `token_nll`


def trunc_normal(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """The init of every matrix: a normal of std INIT_STD truncated at two standard deviations."""
    return INIT_STD * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


def _trunc_normal(rngs: nnx.Rngs, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    return trunc_normal(rngs.params(), shape, dtype)


# ---- RoPE ----------------------------------------------------------------------------------
def rope_inv_freq(cfg: LlamaConfig) -> jax.Array:
    """Inverse frequencies [H/2] with HF's default, linear and llama3 rules."""
    h = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    rs = cfg.rope_scaling
    if rs.rope_type == "linear":
        return inv_freq / rs.factor
    if rs.rope_type == "llama3":
        # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
        old = rs.original_max_position_embeddings
        wavelen = 2 * math.pi / inv_freq
        slow = jnp.where(wavelen > old / rs.low_freq_factor, inv_freq / rs.factor, inv_freq)
        smooth = (old / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
        blended = (1 - smooth) * slow / rs.factor + smooth * slow
        medium = (wavelen >= old / rs.high_freq_factor) & (wavelen <= old / rs.low_freq_factor)
        return jnp.where(medium, blended, slow)
    return inv_freq


def rope_tables(cfg: LlamaConfig, positions_L: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos/sin [L,H] in HF's `rotate_half` layout (frequencies repeated over the two halves)."""
    angles = positions_L.astype(jnp.float32)[:, None] * rope_inv_freq(cfg)[None, :]
    angles_LH = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles_LH), jnp.sin(angles_LH)


def apply_rope(x_BLNH: jax.Array, cos_LH: jax.Array, sin_LH: jax.Array) -> jax.Array:
    """Rotate in x's dtype with the tables cast to it, as HF does: in bfloat16 compute no float32 copy of
    q and k (each [B, L, N, H]) is made for the backward pass."""
    dt = x_BLNH.dtype
    x1, x2 = jnp.split(x_BLNH, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x_BLNH * cos_LH.astype(dt)[:, None, :] + rotated * sin_LH.astype(dt)[:, None, :]


def rms_norm(x_BLD: jax.Array, weight_D: jax.Array, eps: float) -> jax.Array:
    x = x_BLD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return weight_D.astype(x_BLD.dtype) * x.astype(x_BLD.dtype)


def open_rms_norm(x_BLD: jax.Array, weight_D: jax.Array, open_D: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the open hidden channels only (`open_D` 1.0 or 0.0; closed channels are zero in x
    and do not count): what a model without the closed channels computes (the norm under hidden gates)."""
    x = x_BLD.astype(jnp.float32)
    mean_sq = jnp.sum(x * x * open_D, axis=-1, keepdims=True) / jnp.maximum(jnp.sum(open_D), 1.0)
    x = x * jax.lax.rsqrt(mean_sq + eps)
    return weight_D.astype(x_BLD.dtype) * x.astype(x_BLD.dtype)


def norm_for(gates: Gates | None, eps: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The RMSNorm `(x_BLD, weight_D) -> x_BLD` of the model, over the hidden gates' open channels when gated."""
    if gates is None:
        return functools.partial(rms_norm, eps=eps)
    open_D = (gates["hidden"] != 0).astype(jnp.float32)
    return functools.partial(open_rms_norm, open_D=open_D, eps=eps)


# ---- projections ----------------------------------------------------------------------------
def project(x: jax.Array, w: jax.Array, n_in: int, attention: str = "auto") -> jax.Array:
    """x [..., *in] times w [*in, *out], contracting the `n_in` leading axes of w (a q/k/v/o, MLP or LM
    head projection; w is cast to x's dtype): one tensordot, or under the CPU lowering (`attention`
    resolving to `cpu`, see `prunejax.kernels.attention`) one rank-2 matmul over the flattened positions
    with its backward written out (`prunejax.kernels.cpu`)."""
    w = w.astype(x.dtype)
    if attention_kernels.lowering(attention) == "cpu":
        lead, out = x.shape[: x.ndim - n_in], w.shape[n_in:]
        k = math.prod(w.shape[:n_in])
        return cpu_kernels.matmul(x.reshape(-1, k), w.reshape(k, -1)).reshape(*lead, *out)
    return jnp.tensordot(x, w, n_in)


# ---- modules -------------------------------------------------------------------------------
class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, dtype: Any, rngs: nnx.Rngs):
        d, n, k, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nnx.Param(_trunc_normal(rngs, (d, n, h), dtype))
        self.k_proj = nnx.Param(_trunc_normal(rngs, (d, k, h), dtype))
        self.v_proj = nnx.Param(_trunc_normal(rngs, (d, k, h), dtype))
        self.o_proj = nnx.Param(_trunc_normal(rngs, (n, h, d), dtype))

    def heads(
        self, x_BLD: jax.Array, cos_LH: jax.Array, sin_LH: jax.Array, block: int | None = None, attention: str = "auto"
    ) -> jax.Array:
        """Every head's output [B,L,N,H], before `o_proj` mixes them (the input Wanda/SparseGPT see there),
        by the attention implementation `attention` names (`prunejax.kernels.attention`)."""
        q_BLNH = project(x_BLD, self.q_proj[...], 1, attention)
        k_BSKH = project(x_BLD, self.k_proj[...], 1, attention)
        v_BSKH = project(x_BLD, self.v_proj[...], 1, attention)
        q_BLNH = apply_rope(q_BLNH, cos_LH, sin_LH)
        k_BSKH = apply_rope(k_BSKH, cos_LH, sin_LH)
        b, length, n, h = q_BLNH.shape
        kv = k_BSKH.shape[2]
        q_BLKGH = q_BLNH.reshape(b, length, kv, n // kv, h)
        out_BLKGH = attention_kernels.causal_attention(q_BLKGH, k_BSKH, v_BSKH, attention, block)
        return out_BLKGH.reshape(b, length, n, h)

    def __call__(
        self, x_BLD: jax.Array, cos_LH: jax.Array, sin_LH: jax.Array, block: int | None = None, attention: str = "auto"
    ) -> jax.Array:
        return project(self.heads(x_BLD, cos_LH, sin_LH, block, attention), self.o_proj[...], 2, attention)


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, dtype: Any, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nnx.Param(_trunc_normal(rngs, (d, f), dtype))
        self.up_proj = nnx.Param(_trunc_normal(rngs, (d, f), dtype))
        self.down_proj = nnx.Param(_trunc_normal(rngs, (f, d), dtype))

    def hidden(self, x_BLD: jax.Array, attention: str = "auto") -> jax.Array:
        """The input of `down_proj` [B,L,F] (what FFN-neuron importance is measured on)."""
        gate_BLF = project(x_BLD, self.gate_proj[...], 1, attention)
        up_BLF = project(x_BLD, self.up_proj[...], 1, attention)
        return jax.nn.silu(gate_BLF) * up_BLF

    def __call__(self, x_BLD: jax.Array, attention: str = "auto") -> jax.Array:
        return project(self.hidden(x_BLD, attention), self.down_proj[...], 1, attention)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, dtype: Any, rngs: nnx.Rngs):
        self.eps = cfg.rms_norm_eps
        self.input_layernorm = nnx.Param(jnp.ones((cfg.hidden_size,), dtype))
        self.self_attn = Attention(cfg, dtype, rngs)
        self.post_attention_layernorm = nnx.Param(jnp.ones((cfg.hidden_size,), dtype))
        self.mlp = MLP(cfg, dtype, rngs)

    def __call__(
        self,
        x_BLD: jax.Array,
        cos_LH: jax.Array,
        sin_LH: jax.Array,
        block: int | None = None,
        gates: Gates | None = None,
        attention: str = "auto",
    ) -> jax.Array:
        return self.taps(x_BLD, cos_LH, sin_LH, block, gates, attention)[0]  # unused taps cost nothing under jit

    def taps(
        self,
        x_BLD: jax.Array,
        cos_LH: jax.Array,
        sin_LH: jax.Array,
        block: int | None = None,
        gates: Gates | None = None,
        attention: str = "auto",
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The layer's output and the inputs of its four projection groups: "attn" (into q/k/v), "o"
        (per-head, into o_proj), "mlp" (into gate/up), "down". This is the one implementation of the
        layer: the forward pass, calibration's statistics and Sheared's gated training all run it.
        `gates` are this layer's (the module docstring's, each per-layer group's row here); `attention`
        names the implementation (`prunejax.kernels`)."""
        dt = x_BLD.dtype
        norm = norm_for(gates, self.eps)
        attn_in_BLD = norm(x_BLD, self.input_layernorm[...])
        heads_BLNH = self.self_attn.heads(attn_in_BLD, cos_LH, sin_LH, block, attention)
        if gates is not None:
            b, length, n, h = heads_BLNH.shape
            kv = gates["heads"].shape[0]
            grouped = heads_BLNH.reshape(b, length, kv, n // kv, h) * gates["heads"].astype(dt)[:, None, None]
            heads_BLNH = grouped.reshape(b, length, n, h)
        attn_BLD = project(heads_BLNH, self.self_attn.o_proj[...], 2, attention)
        h_BLD = x_BLD + _gated_branch(attn_BLD, gates)
        mlp_in_BLD = norm(h_BLD, self.post_attention_layernorm[...])
        hidden_BLF = self.mlp.hidden(mlp_in_BLD, attention)
        if gates is not None:
            hidden_BLF = hidden_BLF * gates["ffn"].astype(dt)
        mlp_BLD = project(hidden_BLF, self.mlp.down_proj[...], 1, attention)
        y_BLD = h_BLD + _gated_branch(mlp_BLD, gates)
        return y_BLD, {"attn": attn_in_BLD, "o": heads_BLNH, "mlp": mlp_in_BLD, "down": hidden_BLF}


def _gated_branch(out_BLD: jax.Array, gates: Gates | None) -> jax.Array:
    """A residual branch's output, scaled by the layer and hidden gates when there are gates."""
    if gates is None:
        return out_BLD
    dt = out_BLD.dtype
    return gates["layers"].astype(dt) * out_BLD * gates["hidden"].astype(dt)


class Llama(nnx.Module):
    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.cfg = cfg
        self.embed_tokens = nnx.Param(_trunc_normal(rngs, (cfg.vocab_size, cfg.hidden_size), dtype))
        self.layers = nnx.List([DecoderLayer(cfg, dtype, rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = nnx.Param(jnp.ones((cfg.hidden_size,), dtype))
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Param(_trunc_normal(rngs, (cfg.hidden_size, cfg.vocab_size), dtype))


# ---- pure interface ------------------------------------------------------------------------
def _to_pure(tree: Any) -> Any:
    """nnx's pure dict uses int keys for list items; params use HF's string indices."""
    if isinstance(tree, dict):
        return {str(k): _to_pure(v) for k, v in tree.items()}
    return tree


def _from_pure(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {(int(k) if k.isdigit() else k): _from_pure(v) for k, v in tree.items()}
    return tree


@functools.lru_cache(maxsize=64)
def _skeleton(cfg: LlamaConfig) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(nnx.eval_shape(lambda: DecoderLayer(cfg, jnp.float32, nnx.Rngs(0))))


def _layer(cfg: LlamaConfig, params: Params) -> DecoderLayer:
    """The decoder layer module holding `params` (one layer's dict)."""
    graphdef, state = _skeleton(cfg)
    state = jax.tree.map(lambda x: x, state)  # a fresh copy: replace_by_pure_dict writes in place
    nnx.replace_by_pure_dict(state, _from_pure(params))
    return nnx.merge(graphdef, state)


def init_params(cfg: LlamaConfig, key: jax.Array, dtype: Any = jnp.float32) -> Params:
    """Random parameters: truncated normal (std 0.02) matrices, unit norms."""
    model = Llama(cfg, nnx.Rngs(params=key), dtype)
    return _to_pure(nnx.to_pure_dict(nnx.split(model)[1]))


# ---- the stacked layout --------------------------------------------------------------------------
# A train state that scans its layers holds them stacked: params["layers"] is then one layer's dict of
# [n_layers, ...] arrays ({"self_attn": {"q_proj": [n_layers, D, N, H], ...}, ...}) instead of a dict of
# layers "0".."n-1". The step then updates one array per weight kind, not one per layer and kind. Every
# function here takes either layout; checkpoints, MODEL_DIRs and the Python API see per-layer dicts only.
def is_stacked(params: Params) -> bool:
    """Whether `params` (or a params-shaped tree: masks, optimizer moments) holds its layers stacked."""
    layers = params.get("layers")
    return isinstance(layers, dict) and bool(layers) and not all(str(k).isdigit() for k in layers)


def stacked_path(keys: tuple[str, ...]) -> bool:
    """Whether the leaf at `keys` holds stacked layers: under "layers" without a layer index
    (("layers", "mlp", "up_proj") in a stacked tree, ("layers", "3", "mlp", "up_proj") in a per-layer one)."""
    return "layers" in keys[:-1] and not keys[keys.index("layers") + 1].isdigit()


def stackable(layers: list[Params]) -> bool:
    """Whether per-layer dicts can stack: the same leaves with the same shapes and dtypes in every layer."""
    shapes = [jax.tree.map(lambda w: (w.shape, w.dtype), lp) for lp in layers]
    return bool(shapes) and all(s == shapes[0] for s in shapes[1:])


def stack_layers(params: Params) -> Params:
    """`params` with its layers "0".."n-1" stacked into one dict of [n_layers, ...] arrays (numpy arrays
    stack on the host, others where JAX puts them); refuses layers of different shapes or leaves."""
    if is_stacked(params) or "layers" not in params:
        return params
    layers = [params["layers"][str(i)] for i in range(len(params["layers"]))]
    if not stackable(layers):
        raise ValueError("layers of different shapes or leaves do not stack")

    def stack(*ws: Any) -> Any:
        return np.stack(ws) if all(isinstance(w, np.ndarray) for w in ws) else jnp.stack(ws)

    return {**params, "layers": jax.tree.map(stack, *layers)}


def unstack_layers(params: Params) -> Params:
    """`stack_layers`' inverse: the layers as "0".."n-1" again (slices of the stacked arrays)."""
    if not is_stacked(params):
        return params
    n = jax.tree.leaves(params["layers"])[0].shape[0]
    return {**params, "layers": {str(i): jax.tree.map(lambda w, i=i: w[i], params["layers"]) for i in range(n)}}


def hidden_states(
    cfg: LlamaConfig,
    params: Params,
    tokens_BL: jax.Array,
    *,
    dtype: Any = jnp.float32,
    remat: bool = False,
    attn_block: int | None = ATTN_BLOCK,
    attention: str = "auto",
    gates: Gates | None = None,
) -> jax.Array:
    """The last decoder layer's output [B,L,D] (before the final norm), with `gates` multiplied in when given
    (the module docstring's). With `remat` each layer keeps only its input for the backward pass. Layers of
    one shape run as one `lax.scan` over their weights stacked in the compute dtype (and their rows of the
    gates): one layer body to compile and schedule, weights gathered layer by layer on a mesh; the CPU
    lowering keeps the unrolled loop it was measured with (docs/design.md). `params` may hold its layers
    stacked (`stack_layers`, a scanning train state's layout): they are scanned as they are."""
    cos_LH, sin_LH = rope_tables(cfg, jnp.arange(tokens_BL.shape[1]))
    x_BLD = embed(cfg, params, tokens_BL, dtype)
    if gates is not None:
        x_BLD = x_BLD * gates["hidden"].astype(dtype)
    x_BLD = constrain_batch(x_BLD)
    stacked = params["layers"] if is_stacked(params) else None  # a stacked train state's
    rows = None if gates is None else {g: gates[g] for g in _PER_LAYER_GATES}  # [n_layers, ...] each

    def layer(x_BLD: jax.Array, lp: Params, row: Gates | None) -> jax.Array:
        z = None if row is None else {**row, "hidden": gates["hidden"]}
        y_BLD = _layer(cfg, lp)(x_BLD, cos_LH, sin_LH, attn_block, z, attention)
        return constrain_batch(y_BLD)

    if remat:
        layer = jax.checkpoint(layer)  # saves nothing inside the layer: its inputs only
    scan = attention_kernels.lowering(attention) != "cpu"
    if stacked is None or not scan:
        per_layer = unstack_layers(params)["layers"]
        layers = [per_layer[str(i)] for i in range(cfg.num_hidden_layers)]
        if not (scan and stackable(layers)):
            for i, lp in enumerate(layers):
                x_BLD = layer(x_BLD, lp, None if rows is None else {g: z[i] for g, z in rows.items()})
            return x_BLD
        stacked = jax.tree.map(lambda *ws: jnp.stack([w.astype(dtype) for w in ws]), *layers)
    stacked = constrain_stacked(jax.tree.map(lambda w: w.astype(dtype), stacked))
    x_BLD, _ = jax.lax.scan(lambda x, xs: (layer(x, *xs), None), x_BLD, (stacked, rows))
    return x_BLD


def forward(
    cfg: LlamaConfig,
    params: Params,
    tokens_BL: jax.Array,
    *,
    dtype: Any = jnp.float32,
    remat: bool = False,
    attn_block: int | None = ATTN_BLOCK,
    attention: str = "auto",
    gates: Gates | None = None,
) -> jax.Array:
    """Logits [B,L,V] in float32 for int32 tokens [B,L]; `dtype` is the compute dtype, `attention` the
    attention implementation (`prunejax.kernels.attention`: auto, xla, splash, cudnn, cpu), `attn_block`
    the query block of the `xla` one, `gates` the module docstring's."""
    x_BLD = hidden_states(
        cfg, params, tokens_BL, dtype=dtype, remat=remat, attn_block=attn_block, attention=attention, gates=gates
    )
    return head(cfg, params, x_BLD, attention, gates)


def nll_from_logits(logits_BLV: jax.Array, targets_BL: jax.Array) -> jax.Array:
    """-log softmax(logits)[target] per position [B, L] (in the logits' dtype), as logsumexp(logits) -
    logits[target]: only a reduction over the vocabulary, no [B, L, V] log-probabilities (or their
    gradient) materialized; on CPU the head and loss of the tiny study's step take half the time."""
    picked_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits_BLV, axis=-1) - picked_BL


def token_nll(
    cfg: LlamaConfig,
    params: Params,
    tokens_BL: jax.Array,
    targets_BL: jax.Array,
    *,
    dtype: Any = jnp.float32,
    remat: bool = False,
    attn_block: int | None = ATTN_BLOCK,
    chunk: int | None = LOSS_CHUNK,
    attention: str = "auto",
    gates: Gates | None = None,
) -> jax.Array:
    """Next-token negative log-likelihood [B,L] in float32, without materializing all logits at once:
    the head and log-softmax run on `chunk` positions at a time and are recomputed in the backward
    pass ([B, L, V] logits of a 128k vocabulary at 8k positions do not fit on an accelerator)."""
    x_BLD = hidden_states(
        cfg, params, tokens_BL, dtype=dtype, remat=remat, attn_block=attn_block, attention=attention, gates=gates
    )

    def nll(x_BlD: jax.Array, t_Bl: jax.Array) -> jax.Array:
        return nll_from_logits(head(cfg, params, x_BlD, attention, gates), t_Bl)

    b, length, _ = x_BLD.shape
    if chunk is None or length <= chunk or length % chunk:
        return nll(x_BLD, targets_BL)
    n = length // chunk
    x_nBlD = x_BLD.reshape(b, n, chunk, -1).swapaxes(0, 1)
    t_nBl = targets_BL.reshape(b, n, chunk).swapaxes(0, 1)
    out_nBl = jax.lax.map(lambda args: jax.checkpoint(nll)(*args), (x_nBlD, t_nBl))
    return out_nBl.swapaxes(0, 1).reshape(b, length)


def embed(cfg: LlamaConfig, params: Params, tokens_BL: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    return jnp.take(params["embed_tokens"], tokens_BL, axis=0).astype(dtype)


def layer_forward(
    cfg: LlamaConfig,
    layer_params: Params,
    x_BLD: jax.Array,
    positions_L: jax.Array | None = None,
    attention: str = "auto",
) -> jax.Array:
    """One decoder layer on hidden states [B,L,D] (for layer-sequential calibration)."""
    if positions_L is None:
        positions_L = jnp.arange(x_BLD.shape[1])
    cos_LH, sin_LH = rope_tables(cfg, positions_L)
    return _layer(cfg, layer_params)(x_BLD, cos_LH, sin_LH, ATTN_BLOCK, None, attention)


def layer_taps(
    cfg: LlamaConfig, layer_params: Params, x_BLD: jax.Array, block: int | None = ATTN_BLOCK, attention: str = "auto"
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One decoder layer's output [B,L,D] and its projection inputs (`DecoderLayer.taps`): what
    layer-sequential calibration measures, with the forward pass's own attention implementation."""
    cos_LH, sin_LH = rope_tables(cfg, jnp.arange(x_BLD.shape[1]))
    return _layer(cfg, layer_params).taps(x_BLD, cos_LH, sin_LH, block, None, attention)


def layer_mlp_hidden(cfg: LlamaConfig, layer_params: Params, x_BLD: jax.Array) -> jax.Array:
    """Input of `down_proj` [B,L,F] for hidden states [B,L,D] entering the layer's MLP norm."""
    layer = _layer(cfg, layer_params)
    return layer.mlp.hidden(rms_norm(x_BLD, layer.post_attention_layernorm[...], cfg.rms_norm_eps))


def head(
    cfg: LlamaConfig, params: Params, x_BLD: jax.Array, attention: str = "auto", gates: Gates | None = None
) -> jax.Array:
    """Final norm (over the hidden gates' open channels when gated) and LM head: logits [B,L,V] in float32
    from the last hidden states (the matmul in the compute dtype, cast after: float32 out of the matmul
    wrote twice the bytes of the 8B step's largest tensor, and its roofline went 24.46 -> 24.86 s)."""
    x_BLD = norm_for(gates, cfg.rms_norm_eps)(x_BLD, params["norm"])
    w_DV = params["embed_tokens"].T if cfg.tie_word_embeddings else params["lm_head"]
    return project(x_BLD, w_DV, 1, attention).astype(jnp.float32)
