"""All placement in one table: logical axis names per parameter, and logical -> mesh axis rules.

The same axis names drive structured pruning (`prunejax.prune` keeps indices along an axis).
A dimension that does not divide its mesh axis (pruned shapes often don't) is replicated instead,
and that is logged once per (axis, size).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tp")
BATCH_AXES = ("data", "fsdp")

# Leaf name -> logical axes of its array (params layout, see prunejax.model).
LOGICAL_AXES: dict[str, tuple[str, ...]] = {
    "embed_tokens": ("vocab", "embed"),
    "q_proj": ("embed", "q_heads", "head_dim"),
    "k_proj": ("embed", "kv_heads", "head_dim"),
    "v_proj": ("embed", "kv_heads", "head_dim"),
    "o_proj": ("q_heads", "head_dim", "embed"),
    "gate_proj": ("embed", "mlp"),
    "up_proj": ("embed", "mlp"),
    "down_proj": ("mlp", "embed"),
    "input_layernorm": ("embed",),
    "post_attention_layernorm": ("embed",),
    "norm": ("embed",),
    "lm_head": ("embed", "vocab"),
}

# Logical axis -> mesh axis (None = replicated).
RULES: dict[str, str | None] = {
    "vocab": "tp",
    "embed": "fsdp",
    "q_heads": "tp",
    "kv_heads": "tp",
    "head_dim": None,
    "mlp": "tp",
    "layers": None,
}

_warned: set[tuple[str, int, int]] = set()


def logical_axes(path: tuple[str, ...]) -> tuple[str, ...]:
    """Logical axes of the parameter at `path` (e.g. ('layers','3','mlp','down_proj'))."""
    try:
        return LOGICAL_AXES[path[-1]]
    except KeyError:
        raise KeyError(f"no logical axes known for parameter {'/'.join(path)}") from None


def make_mesh(data: int = -1, fsdp: int = 1, tp: int = 1, devices: list[Any] | None = None) -> Mesh:
    """A (data, fsdp, tp) mesh over `devices` (default: all); one size may be -1 to take the rest."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tp]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis size may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into fsdp*tp*data with fixed part {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {math.prod(sizes)} devices, "
            f"{len(devices)} available"
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def parse_mesh(spec: str, devices: list[Any] | None = None) -> Mesh:
    """The mesh named by 'data=2,fsdp=2,tp=2', the CLI spelling of `make_mesh`'s sizes: one size may be
    -1 (the rest of the devices); axes left out are 1, except data, which takes the rest unless
    another axis does ('fsdp=4' on 8 devices is data=2, fsdp=4, tp=1)."""
    sizes: dict[str, int] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in MESH_AXES or key in sizes:
            raise ValueError(f"mesh {spec!r}: expected AXIS=INT items, each AXIS once among {', '.join(MESH_AXES)}")
        try:
            sizes[key] = int(value)
        except ValueError:
            raise ValueError(f"mesh {spec!r}: {key} must be an integer, got {value.strip()!r}") from None
        if sizes[key] < 1 and sizes[key] != -1:
            raise ValueError(f"mesh {spec!r}: {key} must be positive or -1")
    if -1 in sizes.values():
        sizes.setdefault("data", 1)
    return make_mesh(**sizes, devices=devices)


def partition_spec(axes: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Map logical axes to mesh axes, replicating any dimension its mesh axis does not divide."""
    spec = []
    for name, size in zip(axes, shape, strict=True):
        mesh_axis = RULES.get(name)
        if name not in RULES:
            raise KeyError(f"unknown logical axis {name!r}")
        if mesh_axis is not None and size % mesh.shape[mesh_axis]:
            key = (name, size, mesh.shape[mesh_axis])
            if key not in _warned:
                _warned.add(key)
                log.warning(
                    "axis %s of size %d does not divide mesh axis %s (%d): replicated",
                    name,
                    size,
                    mesh_axis,
                    mesh.shape[mesh_axis],
                )
            mesh_axis = None
        spec.append(mesh_axis)
    return PartitionSpec(*spec)


def param_sharding(mesh: Mesh, path: tuple[str, ...], shape: tuple[int, ...]) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(logical_axes(path), tuple(shape), mesh))


def tree_shardings(mesh: Mesh, tree: dict[str, Any]) -> dict[str, Any]:
    """Shardings for a params-shaped tree (params, masks, optimizer moments) of arrays or shapes."""

    def visit(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            return {k: visit(v, (*path, k)) for k, v in node.items()}
        return param_sharding(mesh, path, tuple(node.shape))

    return visit(tree, ())


def shard(mesh: Mesh, tree: dict[str, Any]) -> dict[str, Any]:
    return jax.device_put(tree, tree_shardings(mesh, tree))


def placer(mesh: Mesh) -> Any:
    """A `place(path, array)` callback for `prunejax.hf.load`: each tensor goes straight to its shards."""
    return lambda path, x: jax.device_put(x, param_sharding(mesh, path, x.shape))


def constrain_batch(x: jax.Array) -> jax.Array:
    """Pin activations [B, ...] to the batch axes of the mesh set with `jax.set_mesh` (a no-op without
    one). Without this, XLA may follow the fsdp-sharded embedding instead and replicate the batch."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names) or set(BATCH_AXES) & set(mesh.manual_axes):
        return x  # no mesh, or inside a shard_map over the batch (activations are local there)
    if x.shape[0] % batch_shards(mesh):
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(BATCH_AXES, *([None] * (x.ndim - 1))))


def constrain_stacked(layers: dict[str, Any]) -> dict[str, Any]:
    """Pin one layer's params stacked over layers ([n_layers, ...] leaves) to the table's placement with
    a replicated leading "layers" axis, on the mesh set with `jax.set_mesh` (a no-op without one): a
    scan over the stack then gathers one layer's shards per step instead of the whole stack at once."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or set(mesh.manual_axes) or not set(MESH_AXES) <= set(mesh.axis_names):
        return layers

    def visit(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            return {k: visit(v, (*path, k)) for k, v in node.items()}
        spec = partition_spec(("layers", *logical_axes(path)), tuple(node.shape), mesh)
        return jax.lax.with_sharding_constraint(node, spec)

    return visit(layers, ())


def batch_shards(mesh: Any) -> int:
    """How many ways the batch axes (data x fsdp) of a mesh (concrete or abstract) split a batch."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def ordered_sum(tree: Any, axes: tuple[str, ...], n: int) -> Any:
    """Sum over the n devices of `axes`, inside shard_map, by recursive doubling: round r adds the
    value of partner i XOR 2^r. a + b == b + a exactly, so every device ends with the same bits, and
    the additions happen in an order fixed by the device index alone: N processes give what one
    process gives, to the bit (an XLA/gloo all-reduce sums in an order that depends on how the
    devices are split into processes). n that is not a power of two falls back to `psum`."""
    if n & (n - 1):
        return jax.lax.psum(tree, axes)
    r = 1
    while r < n:
        other = jax.lax.ppermute(tree, axes, [(i, i ^ r) for i in range(n)])
        tree = jax.tree.map(lambda a, b: a + b, tree, other)
        r *= 2
    return tree


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch dimension over (data, fsdp); the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
