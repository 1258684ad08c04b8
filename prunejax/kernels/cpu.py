"""The CPU lowering: what a CPU trace runs for the model's projections and attention.

XLA:CPU runs an N-d einsum's gradient with transposed copies around most of its dots, and its own
softmax-attention gradient transposes the [L, S] probabilities. Here a projection is one rank-2 matmul
[T, K] x [K, N] with its backward written out (MKL's sgemm where it pays: `cpu_gemm`), and attention
has a flash-style written-out backward over causal query blocks. A SmolLM2 layer's forward and backward
took 128 ms as einsums against 83 ms this way (benchmarks/README.md). Chosen by
`prunejax.kernels.attention` for the `cpu` implementation (the default on CPU devices).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from prunejax.kernels import cpu_gemm


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


def matmul(x_TK: jax.Array, w_KN: jax.Array) -> jax.Array:
    """[T, K] x [K, N] with the backward written out (MKL's sgemm where `cpu_gemm.usable`)."""
    return _matmul_TK_KN(x_TK, w_KN)


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


def attend(q_BKGLH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, offset: jax.Array | int) -> jax.Array:
    """The CPU attention one block of queries at a time, each over only the keys it can see (0 .. its
    last position): the fully masked key blocks above the diagonal are never computed (3/8 of the work
    with 4 blocks at L = S; torch's CPU flash attention skips them too). Blocks hold at least
    CAUSAL_BLOCK queries and there are at most CAUSAL_MAX_BLOCKS (the last may be shorter). Only with a
    static offset: a traced one attends all of its queries at once."""
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
