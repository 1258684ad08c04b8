"""Llama-3 as Flax NNX modules, exposed as pure functions over plain parameter dicts.

Legend for array suffixes and einsums:
  B batch   L query length   S key length   D embed (hidden)   V vocab
  N q-heads K kv-heads       G q-heads per kv-head (N = K*G)   H head-dim   F mlp (FFN)

Params are nested dicts whose paths mirror Hugging Face names:
  embed_tokens [V,D]; layers/<i>/self_attn/{q_proj [D,N,H], k_proj [D,K,H], v_proj [D,K,H],
  o_proj [N,H,D]}; layers/<i>/mlp/{gate_proj [D,F], up_proj [D,F], down_proj [F,D]};
  layers/<i>/{input_layernorm, post_attention_layernorm} [D]; norm [D]; lm_head [D,V] (untied only).
NNX objects never leave this module: callers see `(cfg, params)`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from prunejax import cpu_gemm
from prunejax.config import LlamaConfig
from prunejax.sharding import constrain_batch

Params = dict[str, Any]
INIT_STD = 0.02
ATTN_BLOCK = 1024  # queries per attention block for long sequences (see `blockwise_attention`)
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
    x1, x2 = jnp.split(x_BLNH.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = x_BLNH.astype(jnp.float32) * cos_LH[:, None, :] + rotated * sin_LH[:, None, :]
    return out.astype(x_BLNH.dtype)


def rms_norm(x_BLD: jax.Array, weight_D: jax.Array, eps: float) -> jax.Array:
    x = x_BLD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return weight_D.astype(x_BLD.dtype) * x.astype(x_BLD.dtype)


def open_rms_norm(x_BLD: jax.Array, weight_D: jax.Array, open_D: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the open hidden channels only (`open_D` 1.0 or 0.0; closed channels are zero in x
    and do not count): what a model without the closed channels computes. Sheared's gated layer uses it."""
    x = x_BLD.astype(jnp.float32)
    mean_sq = jnp.sum(x * x * open_D, axis=-1, keepdims=True) / jnp.maximum(jnp.sum(open_D), 1.0)
    x = x * jax.lax.rsqrt(mean_sq + eps)
    return weight_D.astype(x_BLD.dtype) * x.astype(x_BLD.dtype)


class LayerGates(NamedTuple):
    """Multipliers that Sheared-LLaMA trains into one decoder layer (`prunejax.prune.sheared_model`)."""

    layer: jax.Array  # [] both residual branches
    heads: jax.Array  # [K] each kv-group's attention output, before o_proj
    ffn: jax.Array  # [F] the input of down_proj
    hidden: jax.Array  # [D] every branch's output
    open: jax.Array  # [D] 1.0 where the hidden gate is nonzero: RMSNorm averages over those channels


# ---- projections ----------------------------------------------------------------------------
CPU_LOWERING: bool | None = None
"""Whether `project` and attention take their CPU lowerings: None decides by JAX's default backend.
`prunejax compile-check` sets False: it traces on a CPU host for a TPU, and must trace what the TPU runs."""


def _cpu_lowering() -> bool:
    return jax.default_backend() == "cpu" if CPU_LOWERING is None else CPU_LOWERING


@jax.custom_vjp
def _matmul_TK_KN(x_TK: jax.Array, w_KN: jax.Array) -> jax.Array:
    return _matmul_fwd(x_TK, w_KN)[0]


def _matmul_fwd(x_TK: jax.Array, w_KN: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    (t, k), n = x_TK.shape, w_KN.shape[1]
    if cpu_gemm.usable(t, k, n, x_TK.dtype, w_KN.dtype):
        return cpu_gemm.matmul(x_TK, w_KN), (x_TK, w_KN)
    return x_TK @ w_KN, (x_TK, w_KN)


def _matmul_bwd(res: tuple[jax.Array, jax.Array], g_TN: jax.Array) -> tuple[jax.Array, jax.Array]:
    x_TK, w_KN = res
    (t, k), n = x_TK.shape, w_KN.shape[1]
    if cpu_gemm.usable(t, k, n, x_TK.dtype, w_KN.dtype, g_TN.dtype):
        # sgemm reads the transposed operands in place: no copies.
        return cpu_gemm.matmul(g_TN, w_KN, trans_b=True), cpu_gemm.matmul(x_TK, g_TN, trans_a=True)
    # The barrier keeps x's transpose a copy of its own: folded back into the dot, XLA:CPU transposes
    # the (larger, fused) output gradient instead, and the weight gradient after it.
    x_KT = jax.lax.optimization_barrier(x_TK.T)
    return g_TN @ w_KN.T, x_KT @ g_TN


_matmul_TK_KN.defvjp(_matmul_fwd, _matmul_bwd)


def project(x: jax.Array, w: jax.Array, n_in: int) -> jax.Array:
    """x [..., *in] times w [*in, *out], contracting the `n_in` leading axes of w (a q/k/v/o, MLP or LM
    head projection; w is cast to x's dtype). On CPU it is one rank-2 matmul [T, K] x [K, N] over the
    flattened positions, with the backward written out: XLA:CPU runs the N-d einsum's gradient with
    transposed copies around most of its dots, and a SmolLM2 layer's forward and backward took 128 ms
    that way against 83 ms this way (benchmarks/README.md). Elsewhere it is one tensordot."""
    w = w.astype(x.dtype)
    lead, out = x.shape[: x.ndim - n_in], w.shape[n_in:]
    if _cpu_lowering():
        k = math.prod(w.shape[:n_in])
        return _matmul_TK_KN(x.reshape(-1, k), w.reshape(k, -1)).reshape(*lead, *out)
    return jnp.tensordot(x, w, n_in)


# ---- modules -------------------------------------------------------------------------------
def _attend(q_BKGLH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, offset: jax.Array | int) -> jax.Array:
    """Softmax attention in head-major layout (batch and kv-group axes leading, so both matmuls are plain
    batched matmuls): queries at positions offset..offset+L-1 over keys 0..S-1, causally masked."""
    if _cpu_lowering():
        return _attend_cpu_blocks(q_BKGLH, k_BKSH, v_BKSH, offset)
    dt = q_BKGLH.dtype
    length, keys = q_BKGLH.shape[3], k_BKSH.shape[2]
    logits_BKGLS = jnp.einsum("BKGLH,BKSH->BKGLS", q_BKGLH, k_BKSH).astype(jnp.float32)
    logits_BKGLS = logits_BKGLS * (1.0 / math.sqrt(q_BKGLH.shape[-1]))
    causal_LS = (offset + jnp.arange(length))[:, None] >= jnp.arange(keys)[None, :]
    logits_BKGLS = jnp.where(causal_LS, logits_BKGLS, jnp.finfo(jnp.float32).min)
    probs_BKGLS = jax.nn.softmax(logits_BKGLS, axis=-1).astype(dt)
    return jnp.einsum("BKGLS,BKSH->BKGLH", probs_BKGLS, v_BKSH)


# The CPU attention: the same softmax attention with a written-out backward that keeps no [.., L, S]
# tensor between the passes (it saves the output and each row's log-sum-exp, as flash attention does,
# and recomputes the probabilities) and computes the backward in the keys-major orientation [Z, S, M],
# where every one of its matmuls has plain operands: XLA:CPU's own gradient transposes the [L, S]
# probabilities and their gradient for the K and V gradients. Z = B*K (batch x kv-group), M = G*L
# (the group's query heads x positions; row m is position offset + m % L).
def _causal_MS(rows: int, length: int, keys: int, offset: jax.Array | int) -> jax.Array:
    return (offset + jnp.arange(rows) % length)[:, None] >= jnp.arange(keys)[None, :]


def _flat_heads(q_BKGLH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array) -> tuple[jax.Array, ...]:
    """q (scaled by 1/sqrt(H)), k and v as [Z, M, H] and [Z, S, H]."""
    b, kv, g, length, h = q_BKGLH.shape
    keys = k_BKSH.shape[2]
    q_ZMH = q_BKGLH.reshape(b * kv, g * length, h) * (1.0 / math.sqrt(h))
    return q_ZMH, k_BKSH.reshape(b * kv, keys, h), v_BKSH.reshape(b * kv, keys, h)


@jax.custom_vjp
def _attend_cpu(q_BKGLH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, offset: jax.Array | int) -> jax.Array:
    return _attend_cpu_fwd(q_BKGLH, k_BKSH, v_BKSH, offset)[0]


def _attend_cpu_fwd(q_BKGLH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, offset: jax.Array | int) -> Any:
    _, _, g, length, _ = q_BKGLH.shape
    keys, dt = k_BKSH.shape[2], q_BKGLH.dtype
    q_ZMH, k_ZSH, v_ZSH = _flat_heads(q_BKGLH, k_BKSH, v_BKSH)
    s_ZMS = jnp.einsum("ZMH,ZSH->ZMS", q_ZMH, k_ZSH).astype(jnp.float32)
    s_ZMS = jnp.where(_causal_MS(g * length, length, keys, offset), s_ZMS, jnp.finfo(jnp.float32).min)
    max_ZM = jnp.max(s_ZMS, axis=-1)
    # materialized once: otherwise XLA:CPU fuses the exp into both the row sum and the P @ V matmul
    e_ZMS = jax.lax.optimization_barrier(jnp.exp(s_ZMS - max_ZM[..., None]))
    sum_ZM = jnp.sum(e_ZMS, axis=-1)
    out_ZMH = jnp.einsum("ZMS,ZSH->ZMH", e_ZMS.astype(dt), v_ZSH) / sum_ZM[..., None].astype(dt)
    out_BKGLH = out_ZMH.reshape(q_BKGLH.shape)
    return out_BKGLH, (q_BKGLH, k_BKSH, v_BKSH, out_BKGLH, max_ZM + jnp.log(sum_ZM), offset)


def _attend_cpu_bwd(res: Any, g_BKGLH: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, None]:
    q_BKGLH, k_BKSH, v_BKSH, out_BKGLH, lse_ZM, offset = res
    _, _, g, length, h = q_BKGLH.shape
    keys, dt = k_BKSH.shape[2], q_BKGLH.dtype
    q_ZMH, k_ZSH, v_ZSH = _flat_heads(q_BKGLH, k_BKSH, v_BKSH)
    z, m = q_ZMH.shape[:2]
    g_ZMH, out_ZMH = g_BKGLH.reshape(z, m, h), out_BKGLH.reshape(z, m, h)
    # the dots contracting H on both sides take their operands as they are; dq's needs k^T, a small
    # [.., H, S] copy, and its own output kept [.., H, M] (folded into the dot, XLA:CPU picks a slow one)
    barrier = jax.lax.optimization_barrier
    kT_ZHS = barrier(k_ZSH.swapaxes(1, 2) * (1.0 / math.sqrt(h)))
    sT_ZSM = jnp.einsum("ZSH,ZMH->ZSM", k_ZSH, q_ZMH).astype(jnp.float32)
    sT_ZSM = jnp.where(_causal_MS(m, length, keys, offset).T, sT_ZSM, jnp.finfo(jnp.float32).min)
    pT_ZSM = jnp.exp(sT_ZSM - lse_ZM[:, None, :])
    dv_ZSH = jnp.einsum("ZSM,ZMH->ZSH", pT_ZSM.astype(dt), g_ZMH)
    dpT_ZSM = jnp.einsum("ZSH,ZMH->ZSM", v_ZSH, g_ZMH).astype(jnp.float32)
    rowdot_ZM = jnp.sum(g_ZMH.astype(jnp.float32) * out_ZMH.astype(jnp.float32), axis=-1)
    dsT_ZSM = (pT_ZSM * (dpT_ZSM - rowdot_ZM[:, None, :])).astype(dt)
    dk_ZSH = jnp.einsum("ZSM,ZMH->ZSH", dsT_ZSM, q_ZMH)
    dqT_ZHM = barrier(jnp.einsum("ZHS,ZSM->ZHM", kT_ZHS, dsT_ZSM))
    dq_BKGLH = dqT_ZHM.swapaxes(1, 2).reshape(q_BKGLH.shape)
    return dq_BKGLH, dk_ZSH.reshape(k_BKSH.shape), dv_ZSH.reshape(v_BKSH.shape), None


_attend_cpu.defvjp(_attend_cpu_fwd, _attend_cpu_bwd)

CAUSAL_BLOCK = 128
"""The fewest queries per block of the CPU attention (`_attend_cpu_blocks`); 0 attends all at once.
Every block adds ops of its own, and XLA:CPU compiles each: blocks of 64 made the 128-token tiny step
12% faster but the tiny study, whose many short runs mostly compile, 10% slower (benchmarks/README.md)."""
CAUSAL_MAX_BLOCKS = 8


def _attend_cpu_blocks(q_BKGLH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, offset: jax.Array | int) -> jax.Array:
    """The CPU attention one block of queries at a time, each over only the keys it can see (0 .. its
    last position): the fully masked key blocks above the diagonal are never computed (3/8 of the work
    with 4 blocks at L = S; torch's CPU flash attention skips them too). Blocks hold at least
    CAUSAL_BLOCK queries and there are at most CAUSAL_MAX_BLOCKS (the last may be shorter). Only with a
    static offset: a traced one (`blockwise_attention`'s blocks) attends all of its queries at once."""
    length, keys = q_BKGLH.shape[3], k_BKSH.shape[2]
    block = max(CAUSAL_BLOCK, -(-length // CAUSAL_MAX_BLOCKS))
    if not isinstance(offset, int) or CAUSAL_BLOCK <= 0 or length <= block:
        return _attend_cpu(q_BKGLH, k_BKSH, v_BKSH, offset)
    outs = []
    for start in range(0, length, block):
        stop = min(length, start + block)
        seen = min(keys, offset + stop)
        q_blk = q_BKGLH[:, :, :, start:stop]
        outs.append(_attend_cpu(q_blk, k_BKSH[:, :, :seen], v_BKSH[:, :, :seen], offset + start))
    return jnp.concatenate(outs, axis=3)


def _head_major(q_BLKGH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array) -> tuple[jax.Array, ...]:
    return q_BLKGH.transpose(0, 2, 3, 1, 4), k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3)


def causal_attention(q_BLKGH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, offset: jax.Array | int) -> jax.Array:
    """Softmax attention of queries at positions offset..offset+L-1 over keys 0..S-1, causally masked."""
    return _attend(*_head_major(q_BLKGH, k_BSKH, v_BSKH), offset).transpose(0, 3, 1, 2, 4)


def blockwise_attention(q_BLKGH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, block: int) -> jax.Array:
    """The same attention, one block of queries at a time, each block recomputed in the backward pass:
    peak memory holds [B, K, G, block, S] scores instead of [B, K, G, L, S] (what makes 8k sequences fit)."""
    b, length, kv, g, h = q_BLKGH.shape
    q_BKGLH, k_BKSH, v_BKSH = _head_major(q_BLKGH, k_BSKH, v_BSKH)
    q_nBKGlH = q_BKGLH.reshape(b, kv, g, length // block, block, h).transpose(3, 0, 1, 2, 4, 5)
    offsets_n = jnp.arange(length // block) * block
    attend = jax.checkpoint(lambda q, off: _attend(q, k_BKSH, v_BKSH, off))
    out_nBKGlH = jax.lax.map(lambda args: attend(*args), (q_nBKGlH, offsets_n))
    return out_nBKGlH.transpose(1, 0, 4, 2, 3, 5).reshape(b, length, kv, g, h)


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, dtype: Any, rngs: nnx.Rngs):
        d, n, k, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nnx.Param(_trunc_normal(rngs, (d, n, h), dtype))
        self.k_proj = nnx.Param(_trunc_normal(rngs, (d, k, h), dtype))
        self.v_proj = nnx.Param(_trunc_normal(rngs, (d, k, h), dtype))
        self.o_proj = nnx.Param(_trunc_normal(rngs, (n, h, d), dtype))

    def heads(self, x_BLD: jax.Array, cos_LH: jax.Array, sin_LH: jax.Array, block: int | None = None) -> jax.Array:
        """Every head's output [B,L,N,H], before `o_proj` mixes them (the input Wanda/SparseGPT see there)."""
        q_BLNH = project(x_BLD, self.q_proj[...], 1)
        k_BSKH = project(x_BLD, self.k_proj[...], 1)
        v_BSKH = project(x_BLD, self.v_proj[...], 1)
        q_BLNH = apply_rope(q_BLNH, cos_LH, sin_LH)
        k_BSKH = apply_rope(k_BSKH, cos_LH, sin_LH)
        b, length, n, h = q_BLNH.shape
        kv = k_BSKH.shape[2]
        q_BLKGH = q_BLNH.reshape(b, length, kv, n // kv, h)
        if block is not None and length > block and length % block == 0:
            out_BLKGH = blockwise_attention(q_BLKGH, k_BSKH, v_BSKH, block)
        else:
            out_BLKGH = causal_attention(q_BLKGH, k_BSKH, v_BSKH, 0)
        return out_BLKGH.reshape(b, length, n, h)

    def __call__(self, x_BLD: jax.Array, cos_LH: jax.Array, sin_LH: jax.Array, block: int | None = None) -> jax.Array:
        out_BLNH = self.heads(x_BLD, cos_LH, sin_LH, block)
        return project(out_BLNH, self.o_proj[...], 2)


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, dtype: Any, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nnx.Param(_trunc_normal(rngs, (d, f), dtype))
        self.up_proj = nnx.Param(_trunc_normal(rngs, (d, f), dtype))
        self.down_proj = nnx.Param(_trunc_normal(rngs, (f, d), dtype))

    def hidden(self, x_BLD: jax.Array) -> jax.Array:
        """The input of `down_proj` [B,L,F] (what FFN-neuron importance is measured on)."""
        gate_BLF = project(x_BLD, self.gate_proj[...], 1)
        up_BLF = project(x_BLD, self.up_proj[...], 1)
        return jax.nn.silu(gate_BLF) * up_BLF

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        h_BLF = self.hidden(x_BLD)
        return project(h_BLF, self.down_proj[...], 1)


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
        gates: LayerGates | None = None,
    ) -> jax.Array:
        return self.taps(x_BLD, cos_LH, sin_LH, block, gates)[0]  # under jit the unused taps cost nothing

    def taps(
        self,
        x_BLD: jax.Array,
        cos_LH: jax.Array,
        sin_LH: jax.Array,
        block: int | None = None,
        gates: LayerGates | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The layer's output and the inputs of its four projection groups: "attn" (into q/k/v), "o"
        (per-head, into o_proj), "mlp" (into gate/up), "down". This is the one implementation of the
        layer: the forward pass, calibration's statistics and Sheared's gated training all run it.
        With `gates` the layer gate scales both residual branches, the head gates each kv-group before
        o_proj, the ffn gates the input of down_proj, the hidden gates every branch output, and both
        norms average over the open channels only."""
        dt = x_BLD.dtype
        if gates is None:
            norm = functools.partial(rms_norm, eps=self.eps)
        else:
            norm = functools.partial(open_rms_norm, open_D=gates.open, eps=self.eps)
        attn_in_BLD = norm(x_BLD, self.input_layernorm[...])
        heads_BLNH = self.self_attn.heads(attn_in_BLD, cos_LH, sin_LH, block)
        if gates is not None:
            b, length, n, h = heads_BLNH.shape
            kv = gates.heads.shape[0]
            grouped = heads_BLNH.reshape(b, length, kv, n // kv, h) * gates.heads.astype(dt)[:, None, None]
            heads_BLNH = grouped.reshape(b, length, n, h)
        attn_BLD = project(heads_BLNH, self.self_attn.o_proj[...], 2)
        h_BLD = x_BLD + _gated_branch(attn_BLD, gates)
        mlp_in_BLD = norm(h_BLD, self.post_attention_layernorm[...])
        hidden_BLF = self.mlp.hidden(mlp_in_BLD)
        if gates is not None:
            hidden_BLF = hidden_BLF * gates.ffn.astype(dt)
        mlp_BLD = project(hidden_BLF, self.mlp.down_proj[...], 1)
        y_BLD = h_BLD + _gated_branch(mlp_BLD, gates)
        return y_BLD, {"attn": attn_in_BLD, "o": heads_BLNH, "mlp": mlp_in_BLD, "down": hidden_BLF}


def _gated_branch(out_BLD: jax.Array, gates: LayerGates | None) -> jax.Array:
    """A residual branch's output, scaled by the layer and hidden gates when there are gates."""
    if gates is None:
        return out_BLD
    dt = out_BLD.dtype
    return gates.layer.astype(dt) * out_BLD * gates.hidden.astype(dt)


class Llama(nnx.Module):
    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.cfg = cfg
        self.embed_tokens = nnx.Param(_trunc_normal(rngs, (cfg.vocab_size, cfg.hidden_size), dtype))
        self.layers = nnx.List([DecoderLayer(cfg, dtype, rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = nnx.Param(jnp.ones((cfg.hidden_size,), dtype))
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Param(_trunc_normal(rngs, (cfg.hidden_size, cfg.vocab_size), dtype))

    def embed(self, tokens_BL: jax.Array, dtype: Any) -> jax.Array:
        return jnp.take(self.embed_tokens[...], tokens_BL, axis=0).astype(dtype)

    def logits(self, x_BLD: jax.Array) -> jax.Array:
        x_BLD = rms_norm(x_BLD, self.norm[...], self.cfg.rms_norm_eps)
        if self.cfg.tie_word_embeddings:
            return project(x_BLD, self.embed_tokens[...].T, 1)
        return project(x_BLD, self.lm_head[...], 1)

    def hidden_states(self, tokens_BL: jax.Array, dtype: Any, remat: bool, block: int | None) -> jax.Array:
        """The last decoder layer's output [B,L,D] (before the final norm)."""
        cos_LH, sin_LH = rope_tables(self.cfg, jnp.arange(tokens_BL.shape[1]))
        x_BLD = constrain_batch(self.embed(tokens_BL, dtype))
        step = nnx.remat(lambda layer, x, c, s: layer(x, c, s, block)) if remat else None
        for layer in self.layers:
            x_BLD = step(layer, x_BLD, cos_LH, sin_LH) if remat else layer(x_BLD, cos_LH, sin_LH, block)
            x_BLD = constrain_batch(x_BLD)
        return x_BLD

    def __call__(
        self, tokens_BL: jax.Array, dtype: Any = jnp.float32, remat: bool = False, block: int | None = None
    ) -> jax.Array:
        return self.logits(self.hidden_states(tokens_BL, dtype, remat, block)).astype(jnp.float32)


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
def _skeleton(cfg: LlamaConfig, module: str) -> tuple[nnx.GraphDef, nnx.State]:
    if module == "layer":
        abstract = nnx.eval_shape(lambda: DecoderLayer(cfg, jnp.float32, nnx.Rngs(0)))
    else:
        abstract = nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0)))
    return nnx.split(abstract)


def _merge(cfg: LlamaConfig, params: Params, module: str) -> Any:
    graphdef, state = _skeleton(cfg, module)
    state = jax.tree.map(lambda x: x, state)  # a fresh copy: replace_by_pure_dict writes in place
    nnx.replace_by_pure_dict(state, _from_pure(params))
    return nnx.merge(graphdef, state)


def init_params(cfg: LlamaConfig, key: jax.Array, dtype: Any = jnp.float32) -> Params:
    """Random parameters: truncated normal (std 0.02) matrices, unit norms."""
    model = Llama(cfg, nnx.Rngs(params=key), dtype)
    return _to_pure(nnx.to_pure_dict(nnx.split(model)[1]))


def forward(
    cfg: LlamaConfig,
    params: Params,
    tokens_BL: jax.Array,
    *,
    dtype: Any = jnp.float32,
    remat: bool = False,
    attn_block: int | None = ATTN_BLOCK,
) -> jax.Array:
    """Logits [B,L,V] in float32 for int32 tokens [B,L]; `dtype` is the compute dtype. Sequences
    longer than `attn_block` (and divisible by it) attend one query block at a time."""
    return _merge(cfg, params, "model")(tokens_BL, dtype, remat, attn_block)


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
) -> jax.Array:
    """Next-token negative log-likelihood [B,L] in float32, without materializing all logits at once:
    the head and log-softmax run on `chunk` positions at a time and are recomputed in the backward
    pass ([B, L, V] logits of a 128k vocabulary at 8k positions do not fit on an accelerator)."""
    x_BLD = _merge(cfg, params, "model").hidden_states(tokens_BL, dtype, remat, attn_block)

    def nll(x_BlD: jax.Array, t_Bl: jax.Array) -> jax.Array:
        return nll_from_logits(head(cfg, params, x_BlD), t_Bl)

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
    cfg: LlamaConfig, layer_params: Params, x_BLD: jax.Array, positions_L: jax.Array | None = None
) -> jax.Array:
    """One decoder layer on hidden states [B,L,D] (for layer-sequential calibration)."""
    if positions_L is None:
        positions_L = jnp.arange(x_BLD.shape[1])
    cos_LH, sin_LH = rope_tables(cfg, positions_L)
    return _merge(cfg, layer_params, "layer")(x_BLD, cos_LH, sin_LH)


def layer_taps(
    cfg: LlamaConfig, layer_params: Params, x_BLD: jax.Array, block: int | None = ATTN_BLOCK
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One decoder layer's output [B,L,D] and its projection inputs (`DecoderLayer.taps`): what
    layer-sequential calibration measures, with the forward pass's own (blockwise) attention."""
    cos_LH, sin_LH = rope_tables(cfg, jnp.arange(x_BLD.shape[1]))
    return _merge(cfg, layer_params, "layer").taps(x_BLD, cos_LH, sin_LH, block)


def gated_layer(
    cfg: LlamaConfig,
    layer_params: Params,
    x_BLD: jax.Array,
    rope: tuple[jax.Array, jax.Array],
    gates: LayerGates,
    block: int | None = ATTN_BLOCK,
) -> jax.Array:
    """One decoder layer with Sheared's gates multiplied in (`DecoderLayer.taps`), on hidden states [B,L,D]
    with the rope tables of their positions; the forward pass's own (blockwise) attention."""
    return _merge(cfg, layer_params, "layer")(x_BLD, *rope, block, gates)


def layer_mlp_hidden(cfg: LlamaConfig, layer_params: Params, x_BLD: jax.Array) -> jax.Array:
    """Input of `down_proj` [B,L,F] for hidden states [B,L,D] entering the layer's MLP norm."""
    layer = _merge(cfg, layer_params, "layer")
    return layer.mlp.hidden(rms_norm(x_BLD, layer.post_attention_layernorm[...], cfg.rms_norm_eps))


def head(cfg: LlamaConfig, params: Params, x_BLD: jax.Array) -> jax.Array:
    """Final norm and LM head: logits [B,L,V] in float32 from the last hidden states."""
    x_BLD = rms_norm(x_BLD, params["norm"], cfg.rms_norm_eps)
    w_DV = params["embed_tokens"].T if cfg.tie_word_embeddings else params["lm_head"]
    return project(x_BLD, w_DV, 1).astype(jnp.float32)
