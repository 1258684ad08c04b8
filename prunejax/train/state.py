"""Building the train state, its shardings, and the step jitted once with them (and buffer donation).

A state holds its layers per layer (the HF-named dict) or, where the step scans them, stacked: one
[n_layers, ...] array per weight kind for params, masks and moments (`scans_layers`). Checkpoints and
MODEL_DIRs hold the per-layer layout whatever the step trains (`per_layer`, `restacked`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prunejax import model, sharding
from prunejax.config import LlamaConfig
from prunejax.hf import CheckpointError
from prunejax.kernels import attention as attention_kernels
from prunejax.sharding import BATCH_AXES, LOGICAL_AXES
from prunejax.tree import apply_masks, dict_keys, leaf_paths, set_path

State = dict[str, Any]


def check_masks(params: Any, masks: Any) -> None:
    """Every mask names a weight and has its shape; anything else is a CheckpointError."""
    for path, m in leaf_paths(masks or {}):
        node = params
        for key in path:
            if not isinstance(node, dict) or key not in node:
                raise CheckpointError(f"mask {'/'.join(path)} names no weight of this model")
            node = node[key]
        if tuple(m.shape) != tuple(node.shape):
            raise CheckpointError(f"mask {'/'.join(path)} has shape {tuple(m.shape)}, weight has {tuple(node.shape)}")


_trunc_normal = jax.jit(model.trunc_normal, static_argnums=(1, 2))  # one compile per distinct size


@functools.cache
def param_shapes(cfg: LlamaConfig) -> Any:
    """`model.init_params`' tree as shapes and dtypes (traced once per config, not computed)."""
    return jax.eval_shape(functools.partial(model.init_params, cfg), jax.random.key(0))


def random_params(cfg: LlamaConfig, key: jax.Array) -> Any:
    """Fresh weights with `model.init_params`' distribution (truncated normal std 0.02, unit norms), one
    compiled sampler per distinct size: compiling the whole init costs ~1 s per matrix on CPU, and
    layers share sizes, so this stays cheap at any depth."""
    leaves = list(leaf_paths(param_shapes(cfg)))
    # the split keys as host data: iterating a key array would compile an unstack (~0.4 s on CPU)
    key_data = np.asarray(jax.random.key_data(jax.random.split(key, len(leaves))))
    params: dict[str, Any] = {}
    for k, (path, sd) in zip(key_data, leaves, strict=True):
        shape = tuple(sd.shape)
        if len(shape) == 1:
            set_path(params, path, np.ones(shape, np.float32))
        else:
            sample = _trunc_normal(jax.random.wrap_key_data(k, impl=jax.random.key_impl(key)), (sd.size,), jnp.float32)
            set_path(params, path, sample.reshape(shape))
    return params


def reinit_kept(cfg: LlamaConfig, masks: Any, key: jax.Array) -> Any:
    """Fresh truncated-normal (std 0.02) weights of `cfg`'s shape, zero where masked (the sparse scratch control)."""
    return apply_masks(random_params(cfg, key), masks)


def scans_layers(cfg: LlamaConfig, masks: Any, attention: str, mesh: Mesh) -> bool:
    """Whether a train state for `cfg` holds its layers stacked (`model.stack_layers`): when the step runs
    them as one scan (an `attention` that does not resolve to the CPU lowering on `mesh`'s platform) and
    they stack (one shape for every layer, and masks on the same leaves of every layer or none)."""
    platform = mesh.devices.flat[0].platform
    if attention_kernels.lowering(attention, platform) == "cpu":
        return False
    shapes = param_shapes(cfg)["layers"]
    if not model.stackable([shapes[str(i)] for i in range(cfg.num_hidden_layers)]):
        return False
    layer_masks = (masks or {}).get("layers", {})
    if not layer_masks:
        return True
    if set(layer_masks) != set(shapes):
        return False
    return model.stackable([layer_masks[str(i)] for i in range(cfg.num_hidden_layers)])


def init_state(
    params: Any,
    masks: Any,
    opt: optax.GradientTransformation,
    seed: int,
    extra: Any = None,
    stacked: bool = False,
) -> State:
    """A step-0 state: params (fp32, masked), fresh optimizer moments, masks, step, RNG; with `extra` (a
    `step.Objective`'s leaves, fp32) also those, and `opt` then updates {"params", "extra"}. With
    `stacked` params, masks and moments hold their layers stacked (`scans_layers`)."""
    if stacked:
        params, masks = model.stack_layers(params), model.stack_layers(masks or {})
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    masks = jax.tree.map(lambda m: jnp.asarray(m, bool), masks or {})
    check_masks(params, masks)
    params = apply_masks(params, masks)
    if extra is not None:
        extra = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), extra)
    state = {
        "params": params,
        "opt_state": opt.init(params if extra is None else {"params": params, "extra": extra}),
        "masks": masks,
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed)),
    }
    return state if extra is None else {**state, "extra": extra}


def abstract_state(
    cfg: LlamaConfig, masks: Any, opt: optax.GradientTransformation, seed: int, mesh: Mesh, stacked: bool = False
) -> State:
    """`place_state(mesh, init_state(...))` for `cfg` as shapes, dtypes and shardings (traced, not
    computed): what the step compiles for before any weight exists. The shardings are part of it: JAX
    keys its compiled steps by them, so shapes alone would compile a program no call finds."""
    shapes = jax.eval_shape(lambda p, m: init_state(p, m, opt, seed, stacked=stacked), param_shapes(cfg), masks)
    return _placed_shapes(mesh, shapes)


def _placed_shapes(mesh: Mesh, shapes: Any) -> Any:
    placed = state_shardings(mesh, shapes)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, placed)


def _params_tree(node: Any) -> bool:
    """A params-shaped dict (params, masks, an optimizer moment): its "layers" is a dict of weights (a
    Sheared gate group named "layers" is an array)."""
    return isinstance(node, dict) and isinstance(node.get("layers"), dict)


def _map_params_trees(fn: Callable[[Any], Any], state: Any) -> Any:
    """`fn` applied to every params-shaped dict of `state`."""
    return jax.tree.map(lambda node: fn(node) if _params_tree(node) else node, state, is_leaf=_params_tree)


def is_stacked(state: State) -> bool:
    return model.is_stacked(state["params"])


_unstacked = jax.jit(functools.partial(_map_params_trees, model.unstack_layers))
_restacked = jax.jit(functools.partial(_map_params_trees, model.stack_layers))


def per_layer(mesh: Mesh, state: State) -> State:
    """`state` with its layers per layer again (checkpoints and MODEL_DIRs hold this layout whatever the
    step scans), on the table's shardings; `state` itself when it is not stacked."""
    if not is_stacked(state):
        return state
    out = _unstacked(state)
    return jax.device_put(out, state_shardings(mesh, out))  # a no-op where XLA already placed it so


def restacked(mesh: Mesh, per_layer_state: State) -> State:
    """`per_layer`'s inverse (a restored checkpoint back in a stacked step's layout), placed."""
    out = _restacked(per_layer_state)
    return jax.device_put(out, state_shardings(mesh, out))


def per_layer_abstract(mesh: Mesh, state: State) -> State:
    """`per_layer(mesh, state)` as shapes, dtypes and shardings (a checkpoint's restore target)."""
    return _placed_shapes(mesh, jax.eval_shape(_unstacked, state))


def compile_ahead(mesh: Mesh, *calls: tuple[Any, tuple[Any, ...]]) -> list[Future]:
    """Compile each (jitted function, abstract arguments) on a background thread, in order, while the
    caller builds the arrays; one future per call, done when its executable is in JAX's cache.

    A later call of the function with arrays of those shapes, dtypes and shardings runs that executable
    instead of tracing and compiling again (under `jax.set_mesh(mesh)`, as the train loop calls it). The
    compiler releases the GIL, so on CPU this overlaps the step's compilation with random init and
    data setup (a cold tiny-parent run: 13.0 -> 10.3 s). Arguments that differ (another shape) only cost
    the compile a call makes anyway; an error in tracing is raised by the future's `result()`."""

    def compile_one(fn: Any, args: tuple[Any, ...]) -> None:
        with jax.set_mesh(mesh):
            fn.lower(*args).compile()

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prunejax-compile")
    futures = [pool.submit(compile_one, fn, args) for fn, args in calls]
    pool.shutdown(wait=False)
    return futures


def state_shardings(mesh: Mesh, state: Any) -> Any:
    """Params-shaped leaves (params, masks, moments) by the logical-axis table, stacked layers with a
    leading "layers" axis; scalars replicated."""

    def leaf(path: tuple[Any, ...], x: Any) -> NamedSharding:
        keys = dict_keys(path)
        if keys and keys[-1] in LOGICAL_AXES:
            axes = LOGICAL_AXES[keys[-1]]
            if model.stacked_path(keys):
                axes = ("layers", *axes)
            if len(axes) == np.ndim(x):
                return NamedSharding(mesh, sharding.partition_spec(axes, tuple(np.shape(x)), mesh))
        return sharding.replicated(mesh)

    return jax.tree_util.tree_map_with_path(leaf, state)


def batch_sharding(mesh: Mesh, accumulated: bool = True) -> NamedSharding:
    """[A, b, L] train batches (b over data x fsdp) or [b, L] eval batches."""
    spec = PartitionSpec(None, BATCH_AXES, None) if accumulated else PartitionSpec(BATCH_AXES, None)
    return NamedSharding(mesh, spec)


def abstract_batch(mesh: Mesh, shape: tuple[int, ...], accumulated: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of what `global_batch` makes of int32 windows whose global shape is `shape`."""
    tokens = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding(mesh, accumulated))
    return {"inputs": tokens, "targets": tokens}


def global_batch(mesh: Mesh, local: dict[str, np.ndarray], accumulated: bool = True) -> dict[str, jax.Array]:
    """Assemble this process's rows into global arrays (the same call on one or many processes)."""
    s = batch_sharding(mesh, accumulated)
    return {k: jax.make_array_from_process_local_data(s, v) for k, v in local.items()}


def jit_train_step(
    step_fn: Callable[..., Any], mesh: Mesh, state: State, with_teacher: Any = None
) -> Callable[..., tuple[State, dict[str, jax.Array]]]:
    """jit once with explicit shardings; the state buffers are donated (updated in place)."""
    state_sh = state_shardings(mesh, state)
    in_sh: tuple[Any, ...] = (state_sh, batch_sharding(mesh))
    if with_teacher is not None:
        in_sh += (state_shardings(mesh, with_teacher),)
    return jax.jit(
        step_fn,
        in_shardings=in_sh,
        out_shardings=(state_sh, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def jit_eval_step(eval_fn: Callable[..., Any], mesh: Mesh, params: Any) -> Callable[..., jax.Array]:
    return jax.jit(
        eval_fn,
        in_shardings=(state_shardings(mesh, params), batch_sharding(mesh, accumulated=False)),
        out_shardings=sharding.replicated(mesh),
    )


def place_state(mesh: Mesh, state: State) -> State:
    return jax.device_put(state, state_shardings(mesh, state))
