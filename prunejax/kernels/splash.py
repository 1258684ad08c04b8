"""Causal attention on TPU: JAX's own Pallas splash kernel, under `shard_map` over the mesh.

`jax.experimental.pallas.ops.tpu.splash_attention` computes flash attention block by block and, with a
causal mask, never visits the key blocks above the diagonal (forward, dq and dkv kernels). It takes one
sequence [heads, length, head_dim] with grouped-query attention built in (q heads a multiple of kv
heads), so it is vmapped over the batch and run per device: the batch is split over the mesh's batch
axes and the heads over `tp` where they divide (each device attends its own sequences and heads; no
communication), everything else is replicated. q is pre-scaled by 1/sqrt(H), as the kernel expects.
On CPU it runs in Pallas interpret mode (the tests; `interpret=True`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec

from prunejax.sharding import BATCH_AXES, batch_shards

BLOCK = 512
"""Query and key tile of every splash kernel (MaxText's default); shorter or indivisible sequences use the
largest multiple of 128 that divides them."""


def block_for(length: int) -> int | None:
    """The splash tile for a sequence of `length`, or None when no multiple of 128 divides it."""
    for block in (BLOCK, 256, 128):
        if length % block == 0:
            return block
    return None


def _kernel(heads: int, length: int, interpret: bool) -> splash.SplashAttentionKernel:
    block = block_for(length)
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((length, length))] * heads)
    # built per trace, not cached: the kernel holds its mask's block tables as arrays of the trace it was made in
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _local(q_BNLH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, interpret: bool) -> jax.Array:
    kernel = _kernel(q_BNLH.shape[1], q_BNLH.shape[2], interpret)
    return jax.vmap(kernel)(q_BNLH, k_BKSH, v_BKSH)


def attention(q_BLKGH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, *, interpret: bool = False) -> jax.Array:
    """Causal attention of queries [B,L,K,G,H] over keys and values [B,L,K,H] (same positions): [B,L,K,G,H]."""
    b, length, kv, g, h = q_BLKGH.shape
    dt = q_BLKGH.dtype
    # [B, N, L, H] with head n = k * G + g, the kernel's grouping of q heads over kv heads
    q_BNLH = (q_BLKGH * (1.0 / math.sqrt(h))).astype(dt).reshape(b, length, kv * g, h).transpose(0, 2, 1, 3)
    k_BKSH, v_BKSH = k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3)
    mesh = jax.sharding.get_abstract_mesh()
    run = functools.partial(_local, interpret=interpret)
    if not mesh.empty and not set(mesh.manual_axes) and set(BATCH_AXES) <= set(mesh.axis_names):
        spec = PartitionSpec(*split(mesh, b, kv), None, None)
        run = jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
    out_BNLH = run(q_BNLH, k_BKSH, v_BKSH)
    return out_BNLH.transpose(0, 2, 1, 3).reshape(b, length, kv, g, h)


def split(mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh, batch: int, kv_heads: int) -> tuple[Any, str | None]:
    """The mesh axes the kernel's batch and heads are split over: the batch axes where they divide the
    batch, and `tp` where it divides the kv heads (a q head stays with its kv head); None: not split."""
    batch_axes = BATCH_AXES if batch % batch_shards(mesh) == 0 else None
    heads = "tp" if "tp" in mesh.axis_names and kv_heads % mesh.shape["tp"] == 0 else None
    return batch_axes, heads


def local_work(mesh: jax.sharding.Mesh, batch: int, q_heads: int, kv_heads: int) -> tuple[int, int]:
    """(sequences, q heads) one device's kernel attends under `split`."""
    batch_axes, heads = split(mesh, batch, kv_heads)
    return batch // (batch_shards(mesh) if batch_axes else 1), q_heads // (mesh.shape["tp"] if heads else 1)


def kernel_flops(batch: int, heads: int, length: int, head_dim: int) -> dict[str, float]:
    """FLOPs per execution of each splash kernel (they carry no cost estimate) at the tile `block_for`
    picks, causal: of the (L / block)^2 tiles the n(n+1)/2 on and below the diagonal are computed. In
    units of one tiled [L, L] x H matmul: the forward 2 (QK^T, PV), dq 3 (QK^T, dO V^T, dS K), dkv 4
    (QK^T, dO V^T, P^T dO, dS^T Q). For `prunejax.hlo_cost` (the same names on MaxText's program)."""
    block = block_for(length) or length
    n = length // block
    unit = 2.0 * batch * heads * head_dim * block * block * n * (n + 1) / 2
    flops = {"fwd": 2 * unit, "dq": 3 * unit, "dkv": 4 * unit}
    return {  # MaxText's kernels are the "segmented" ones (they take segment ids)
        f"splash_mha_{kind}{seg}_{res}": value
        for kind, value in flops.items()
        for seg in ("", "_segmented")
        for res in ("residuals", "no_residuals")
    }
