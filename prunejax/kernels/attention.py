"""Causal attention, one implementation per platform, chosen from the devices the program is traced for.

    auto    splash on TPU, cudnn on GPU (where cuDNN serves the shape and dtype, else xla), cpu on CPU
    xla     the reference: einsums with float32 scores, one block of queries at a time over only the keys
            it can see, each block recomputed in the backward pass
    splash  JAX's Pallas splash kernel under shard_map (`prunejax.kernels.splash`); interpret mode when
            the trace is not for a TPU, so CPU tests run the TPU kernel
    cudnn   `jax.nn.dot_product_attention(implementation="cudnn")` (bf16/fp16, head_dim <= 128)
    cpu     the CPU lowering (`prunejax.kernels.cpu`), which also turns projections into rank-2 matmuls

The platform is that of the mesh set with `jax.set_mesh` for the trace (its abstract device: a TPU
topology compiled from a CPU host reads "tpu"), else of JAX's default devices, where jit places a
program without a mesh. The choice is made while tracing and is a static part of the traced program:
every caller passes the implementation by name (a train config's `attention:` key, `forward(...,
attention=)`), so two programs with different choices are two jit cache entries, never one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from prunejax.kernels import IMPLEMENTATIONS, cpu, splash

ATTN_BLOCK = 1024
"""Queries per block of the `xla` implementation: its backward holds [B, K, G, block, S] scores, not [.., L, S]."""


def trace_platform() -> str:
    """ "tpu", "gpu" or "cpu": the platform of the mesh this trace is for, else of JAX's default devices."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    return device.platform if device is not None else jax.devices()[0].platform


def check(name: str) -> str:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attention {name!r}: expected one of {', '.join(IMPLEMENTATIONS)}")
    return name


def lowering(name: str, platform: str | None = None) -> str:
    """The implementation `name` stands for in this trace (`auto` resolved by the platform), or on
    `platform` when given (a program about to be traced for a mesh's devices)."""
    if check(name) != "auto":
        return name
    platform = platform or trace_platform()
    return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn", "rocm": "xla", "cpu": "cpu"}.get(platform, "xla")


def cudnn_serves(q_BLKGH: jax.Array, k_BSKH: jax.Array) -> bool:
    """cuDNN's fused attention: fp16/bf16, head_dim a multiple of 8 up to 128, queries and keys alike."""
    h = q_BLKGH.shape[-1]
    return (
        q_BLKGH.dtype in (jnp.bfloat16, jnp.float16) and h <= 128 and h % 8 == 0 and q_BLKGH.shape[1] == k_BSKH.shape[1]
    )


def causal_attention(
    q_BLKGH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, attention: str = "auto", block: int | None = ATTN_BLOCK
) -> jax.Array:
    """Softmax attention of queries at positions 0..L-1 [B,L,K,G,H] over keys and values [B,L,K,H] at the
    same positions, causally masked, by the implementation `attention` names: [B,L,K,G,H]. `block` is
    the `xla` implementation's query block (None: all queries at once)."""
    impl = lowering(attention)
    length = q_BLKGH.shape[1]
    if impl == "splash":
        if splash.block_for(length) is not None:
            return splash.attention(q_BLKGH, k_BSKH, v_BSKH, interpret=trace_platform() != "tpu")
        if attention == "splash":
            raise ValueError(f"attention 'splash' needs a sequence length divisible by 128, got {length}")
        impl = "xla"
    if impl == "cudnn":
        if cudnn_serves(q_BLKGH, k_BSKH):
            b, _, kv, g, h = q_BLKGH.shape
            q_BLNH = q_BLKGH.reshape(b, length, kv * g, h)  # head n = k * G + g: cuDNN's grouping too
            out = jax.nn.dot_product_attention(q_BLNH, k_BSKH, v_BSKH, is_causal=True, implementation="cudnn")
            return out.reshape(q_BLKGH.shape)
        if attention == "cudnn":
            raise ValueError(
                f"attention 'cudnn' serves bf16/fp16 with head_dim <= 128 (a multiple of 8); got "
                f"{q_BLKGH.dtype} with head_dim {q_BLKGH.shape[-1]} (use attention: auto or xla)"
            )
        impl = "xla"
    q_BKGLH = q_BLKGH.transpose(0, 2, 3, 1, 4)
    k_BKSH, v_BKSH = k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3)
    if impl == "cpu":
        out_BKGLH = cpu.attend(q_BKGLH, k_BKSH, v_BKSH, 0)
    else:
        out_BKGLH = _xla_blocks(q_BKGLH, k_BKSH, v_BKSH, block)
    return out_BKGLH.transpose(0, 3, 1, 2, 4)


def attend_xla(q_BKGLH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, offset: int) -> jax.Array:
    """The reference: queries at positions offset..offset+L-1 over keys 0..S-1, float32 scores, causal."""
    dt = q_BKGLH.dtype
    length, keys = q_BKGLH.shape[3], k_BKSH.shape[2]
    logits_BKGLS = jnp.einsum("BKGLH,BKSH->BKGLS", q_BKGLH, k_BKSH).astype(jnp.float32)
    logits_BKGLS = logits_BKGLS * (1.0 / math.sqrt(q_BKGLH.shape[-1]))
    causal_LS = (offset + jnp.arange(length))[:, None] >= jnp.arange(keys)[None, :]
    logits_BKGLS = jnp.where(causal_LS, logits_BKGLS, jnp.finfo(jnp.float32).min)
    probs_BKGLS = jax.nn.softmax(logits_BKGLS, axis=-1).astype(dt)
    return jnp.einsum("BKGLS,BKSH->BKGLH", probs_BKGLS, v_BKSH)


def _xla_blocks(q_BKGLH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, block: int | None) -> jax.Array:
    """`attend_xla` one block of queries at a time, each over only the keys up to its last position (the
    blocks above the diagonal are never computed) and recomputed in the backward pass."""
    length = q_BKGLH.shape[3]
    if block is None or length <= block:
        return attend_xla(q_BKGLH, k_BKSH, v_BKSH, 0)
    attend = jax.checkpoint(attend_xla, static_argnums=(3,))
    outs = []
    for start in range(0, length, block):
        stop = min(length, start + block)
        outs.append(attend(q_BKGLH[:, :, :, start:stop], k_BKSH[:, :, :stop], v_BKSH[:, :, :stop], start))
    return jnp.concatenate(outs, axis=3)
