"""Calibration: per-layer statistics as values from jitted functions, and a layer-sequential driver.

`layer_statistics` runs one decoder layer on a batch of hidden states and returns its output with
float32 sums of what pruning methods need; `sequential` is a plain Python loop over the layers in
which layer i's statistics are taken on the outputs of the (already pruned) layers before it.
No hooks, no in-place writes: a method gets statistics and returns new layer parameters.
Every driver takes an optional `mesh`: each batch is then split over its (data, fsdp) axes (the
parameters stay where they are); without one everything runs on the default device.

Statistics (all sums over the calibration tokens of one layer; "inputs" are the four distinct
projection inputs: `attn` = input RMSNorm output (q/k/v), `o` = attention output per head
(o_proj), `mlp` = post-attention RMSNorm output (gate/up), `down` = SiLU(gate)*up (down_proj)):
  hessian   XᵀX per input [I,I]                               (SparseGPT)
  sq_norm   Σ x_j² per input column [I]                       (Wanda: ‖X_j‖₂ = sqrt)
  cosine    Σ over tokens of cos(h_in, h_out), and `tokens`   (ShortGPT block influence)
  act       Minitron activation importance per hidden channel (both RMSNorm outputs), FFN neuron
            (`down` input) and q-head (L2 of its attention output): for every sequence the mean
            over positions of |a|, then the sum over sequences of its square (sqrt of the total is
            the L2 over the batch: Minitron's (batch=L2, sequence=mean) reduction)
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from prunejax.config import LlamaConfig
from prunejax.data.store import DataError, TokenStore
from prunejax.distributed import to_host, tree_to_host
from prunejax.model import embed, head, layer_taps, nll_from_logits

log = logging.getLogger(__name__)
_unsharded: set[tuple[int, int]] = set()

Params = dict[str, Any]
Stats = dict[str, Any]
STATS = ("hessian", "sq_norm", "cosine", "act")
INPUTS = ("attn", "o", "mlp", "down")
DEFAULT_SAMPLES = 128
DEFAULT_SEQ_LEN = 2048


class CalibrationError(ValueError):
    """Calibration data that is too short, or statistics that are not finite."""


def calibration_tokens(data_dir: str, samples: int = DEFAULT_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN) -> np.ndarray:
    """The first samples*seq_len tokens of a DATA_DIR's train split as [N, L] int32."""
    if samples < 1 or seq_len < 2:
        raise CalibrationError(f"need at least 1 sample of at least 2 tokens, got {samples} x {seq_len}")
    store = TokenStore(data_dir)
    need = samples * seq_len
    have = store.num_tokens("train")
    if have < need:
        raise CalibrationError(
            f"{data_dir}: calibration needs {samples} x {seq_len} = {need:,} tokens, the train split has {have:,}"
        )
    try:
        return store.read("train", 0, need).reshape(samples, seq_len)
    except DataError as e:
        raise CalibrationError(str(e)) from e


def _sample_sums(a_BL_: jax.Array) -> jax.Array:
    """Σ over positions of |a| per sequence [B, ...] (the mean needs the whole sequence: see `act`)."""
    return jnp.sum(jnp.abs(a_BL_), axis=1)


def _token_sums(x_BLD: jax.Array, y_BLD: jax.Array, taps: dict[str, jax.Array], stats: tuple[str, ...]) -> Stats:
    """Sums over the tokens held here of every statistic that is a plain token sum, plus the
    per-sequence position sums that `act` squares once they cover whole sequences."""
    flat = {name: t.reshape(-1, math.prod(t.shape[2:])) for name, t in taps.items()}
    out: Stats = {"tokens": jnp.float32(x_BLD.shape[0] * x_BLD.shape[1])}
    if "hessian" in stats:
        out["hessian"] = {name: jnp.einsum("TI,TJ->IJ", x, x) for name, x in flat.items()}
    if "sq_norm" in stats:
        out["sq_norm"] = {name: jnp.sum(x * x, axis=0) for name, x in flat.items()}
    if "cosine" in stats:
        num_BL = jnp.sum(x_BLD * y_BLD, axis=-1)
        den_BL = jnp.linalg.norm(x_BLD, axis=-1) * jnp.linalg.norm(y_BLD, axis=-1)
        out["cosine"] = jnp.sum(num_BL / jnp.maximum(den_BL, 1e-12))
    if "act" in stats:
        out["act"] = {
            "embed": (_sample_sums(taps["attn"]), _sample_sums(taps["mlp"])),
            "mlp": _sample_sums(taps["down"]),
            "heads": _sample_sums(jnp.linalg.norm(taps["o"], axis=-1)),
        }
    return out


def _finish_act(out: Stats, length: int) -> Stats:
    """Minitron's reduction: per sequence the mean over positions, squared, summed over sequences."""
    if "act" not in out:
        return out

    def sq(s_B_: jax.Array) -> jax.Array:
        return jnp.sum((s_B_ / length) ** 2, axis=0)

    act = out["act"]
    return {
        **out,
        "act": {"embed": sq(act["embed"][0]) + sq(act["embed"][1]), "mlp": sq(act["mlp"]), "heads": sq(act["heads"])},
    }


def split_axis(shape: tuple[int, ...], mesh: Mesh | None) -> int | None:
    """Which axis of a calibration batch [B, L, ...] the mesh's batch axes split: B when it divides
    them, else L (a small batch of long sequences still uses every device), else none (replicated)."""
    if mesh is None:
        return None
    from prunejax.sharding import batch_shards

    shards = batch_shards(mesh)
    if shards == 1:
        return None
    return 0 if shape[0] % shards == 0 else 1 if shape[1] % shards == 0 else None


@functools.partial(jax.jit, static_argnames=("cfg", "stats", "mesh", "attention"))
def layer_statistics(
    cfg: LlamaConfig,
    lp: Params,
    x_BLD: jax.Array,
    stats: tuple[str, ...],
    mesh: Mesh | None = None,
    attention: str = "auto",
) -> tuple[jax.Array, Stats]:
    """Layer output [B,L,D] and the float32 sums named in `stats` over this batch (see module doc).

    With a `mesh` the layer runs on the batch as placed by `_place` (split over B or L), each device
    sums its own tokens, and the partial sums are reduced in a fixed order (`prunejax.sharding.ordered_sum`)."""
    lp = jax.tree.map(lambda w: w.astype(jnp.float32), lp)
    x_BLD = x_BLD.astype(jnp.float32)
    y_BLD, taps = _taps_on(mesh, cfg, lp, x_BLD, attention)
    axis = split_axis(x_BLD.shape, mesh)
    if axis is None:
        return y_BLD, _finish_act(_token_sums(x_BLD, y_BLD, taps, stats), x_BLD.shape[1])
    from jax.sharding import PartitionSpec

    from prunejax.sharding import BATCH_AXES, batch_shards, ordered_sum

    n = batch_shards(mesh)
    spec = placement(x_BLD.shape, mesh).spec  # how the batch arrives (B or L split)

    def local(x: jax.Array, y: jax.Array, t: dict[str, jax.Array]) -> Stats:
        part = _token_sums(x, y, t, stats)
        if axis == 1:  # whole sequences only once the position sums are complete
            return _finish_act(ordered_sum(part, BATCH_AXES, n), x_BLD.shape[1])
        return ordered_sum(_finish_act(part, x_BLD.shape[1]), BATCH_AXES, n)

    reduce = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=PartitionSpec(), check_vma=False)
    return y_BLD, reduce(x_BLD, y_BLD, taps)  # "tokens" too: the local counts summed


@functools.partial(jax.jit, static_argnames=("cfg", "mesh", "attention"))
def layer_apply(
    cfg: LlamaConfig, lp: Params, x_BLD: jax.Array, mesh: Mesh | None = None, attention: str = "auto"
) -> jax.Array:
    lp = jax.tree.map(lambda w: w.astype(jnp.float32), lp)
    return _taps_on(mesh, cfg, lp, x_BLD.astype(jnp.float32), attention)[0]


def _taps_on(mesh: Mesh | None, cfg: LlamaConfig, lp: Params, x_BLD: jax.Array, attention: str) -> Any:
    """`layer_taps` traced for `mesh` when there is one: the attention implementation is chosen by its
    devices' platform and runs per device on its batch axes (`prunejax.kernels`)."""
    if mesh is None:
        return layer_taps(cfg, lp, x_BLD, attention=attention)
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return layer_taps(cfg, lp, x_BLD, attention=attention)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _embed(cfg: LlamaConfig, params: Params, tokens_BL: jax.Array) -> jax.Array:
    return embed(cfg, params, tokens_BL, jnp.float32)


@functools.partial(jax.jit, static_argnames=("cfg",))
def head_token_losses(cfg: LlamaConfig, head_params: Params, x_BLD: jax.Array, tokens_BL: jax.Array) -> jax.Array:
    """Next-token cross-entropy per position [B, L-1] (float32) of the final hidden states; `head_params`
    has norm/embeddings. Per token, so the sum is taken on the host in one order (`head_loss`)."""
    head_params = jax.tree.map(lambda w: w.astype(jnp.float32), head_params)
    return nll_from_logits(head(cfg, head_params, x_BLD.astype(jnp.float32))[:, :-1], tokens_BL[:, 1:])


def head_loss(cfg: LlamaConfig, head_params: Params, x_BLD: jax.Array, tokens_BL: jax.Array) -> float:
    """Summed next-token cross-entropy, added up on the host in float64: the same number however the
    batch was split over devices and processes."""
    return float(np.sum(to_host(head_token_losses(cfg, head_params, x_BLD, tokens_BL)), dtype=np.float64))


def _place_model(params: Params, mesh: Mesh | None) -> Params:
    """The whole model on the mesh, layer by layer, sharded by the logical-axis table."""
    if mesh is None:
        return params
    layers = {k: place_weights(v, mesh) for k, v in params["layers"].items()}
    return {**place_weights(_head_params(params), mesh), "layers": layers}


def _head_params(params: Params) -> Params:
    return {k: v for k, v in params.items() if k != "layers"}


def _batches(n: int, batch_size: int) -> list[slice]:
    if batch_size < 1:
        raise CalibrationError(f"batch size must be positive, got {batch_size}")
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def placement(shape: tuple[int, ...], mesh: Mesh) -> jax.sharding.NamedSharding:
    """Where a calibration batch [B, L, ...] goes on the mesh: split over B or L (`split_axis`), else
    replicated, said once per shape. `prunejax compile-check` compiles against this same placement."""
    from jax.sharding import NamedSharding, PartitionSpec

    from prunejax.sharding import BATCH_AXES, batch_shards

    axis = split_axis(shape, mesh)
    if axis is not None:
        return NamedSharding(mesh, PartitionSpec(*([None] * axis), BATCH_AXES))
    shards = batch_shards(mesh)
    if shards > 1 and (tuple(shape[:2]), shards) not in _unsharded:
        _unsharded.add((tuple(shape[:2]), shards))
        log.warning("calibration batch %s divides %d batch shards in neither B nor L: replicated", shape, shards)
    return NamedSharding(mesh, PartitionSpec())


def _place(x: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """A batch [B, L, ...] on the mesh (see `placement`), or on the default device without one."""
    if mesh is None:
        return jnp.asarray(x)
    return jax.device_put(x, placement(x.shape, mesh))


def check_finite(stats: Stats, where: str) -> None:
    """Raise CalibrationError naming the first statistic holding NaN or Inf."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(stats):
        if not np.all(np.isfinite(to_host(leaf))):
            name = "/".join(str(getattr(p, "key", p)) for p in path)
            raise CalibrationError(f"{where}: statistic {name} holds NaN or Inf (the model or the data is broken)")


def place_weights(tree: Params, mesh: Mesh | None) -> Params:
    """Weights (one layer, or the embedding and head) on the mesh, each leaf sharded by the logical-axis
    table (`embed` over fsdp; heads, mlp and vocab over tp); as given without a mesh. Calibration holds
    the model wherever it was loaded and places one layer at a time."""
    if mesh is None:
        return tree
    from prunejax.sharding import shard

    return shard(mesh, tree)


def embed_tokens(
    cfg: LlamaConfig, params: Params, tokens_NL: np.ndarray, batch_size: int = 8, mesh: Mesh | None = None
) -> np.ndarray:
    """Hidden states entering layer 0, [N,L,D] float32 on the host."""
    table = place_weights({"embed_tokens": params["embed_tokens"]}, mesh)
    return np.concatenate(
        [to_host(_embed(cfg, table, _place(tokens_NL[s], mesh))) for s in _batches(len(tokens_NL), batch_size)]
    )


PruneLayer = Callable[[str, Params, Stats], Params]


def sequential(
    cfg: LlamaConfig,
    params: Params,
    tokens_NL: np.ndarray,
    stats: Sequence[str],
    prune_layer: PruneLayer | None = None,
    *,
    batch_size: int = 8,
    mesh: Mesh | None = None,
) -> tuple[Params, dict[str, Stats]]:
    """Run the layers in order on calibration tokens [N,L]; for each, sum `stats` over all batches
    (inputs come from the layers already pruned), then let `prune_layer(key, layer_params, stats)`
    return its replacement. Returns (params with the new layers, per-layer statistics on the host)."""
    unknown = sorted(set(stats) - set(STATS))
    if unknown:
        raise CalibrationError(f"unknown statistic(s) {', '.join(unknown)}; valid: {', '.join(STATS)}")
    stats = tuple(sorted(stats))
    x_NLD = embed_tokens(cfg, params, tokens_NL, batch_size, mesh)
    check_finite({"embeddings": x_NLD}, "calibration inputs")
    new_layers: Params = {}
    all_stats: dict[str, Stats] = {}
    for key in sorted(params["layers"], key=int):
        lp = params["layers"][key]
        placed = place_weights(lp, mesh)
        total: Stats | None = None
        y_NLD = np.empty_like(x_NLD)
        for s in _batches(len(x_NLD), batch_size):
            y_BLD, part = layer_statistics(cfg, placed, _place(x_NLD[s], mesh), stats, mesh)
            y_NLD[s] = to_host(y_BLD)
            total = part if total is None else jax.tree.map(jnp.add, total, part)
        total = tree_to_host(total)
        check_finite(total, f"layer {key}")
        all_stats[key] = total
        if prune_layer is not None:
            lp = prune_layer(key, lp, total)
            placed = place_weights(lp, mesh)
            for s in _batches(len(x_NLD), batch_size):
                y_NLD[s] = to_host(layer_apply(cfg, placed, _place(x_NLD[s], mesh), mesh))
            check_finite({"outputs": y_NLD}, f"layer {key} after pruning")
        new_layers[key] = lp
        x_NLD = y_NLD
    return {**params, "layers": new_layers}, all_stats


def lm_loss(
    cfg: LlamaConfig, params: Params, tokens_NL: np.ndarray, *, batch_size: int = 8, mesh: Mesh | None = None
) -> float:
    """Mean next-token cross-entropy of a model on tokens [N,L] (the layers run one at a time)."""
    params = _place_model(params, mesh)
    total = 0.0
    for s in _batches(len(tokens_NL), batch_size):
        tokens = _place(tokens_NL[s], mesh)
        x = _embed(cfg, params, tokens)
        for key in sorted(params["layers"], key=int):
            x = layer_apply(cfg, params["layers"][key], x)
        total += head_loss(cfg, _head_params(params), x, tokens)
    return total / (tokens_NL.shape[0] * (tokens_NL.shape[1] - 1))


def block_removal_losses(
    cfg: LlamaConfig,
    params: Params,
    tokens_NL: np.ndarray,
    block: int,
    *,
    batch_size: int = 8,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, float]:
    """(mean calibration LM loss after removing layers [s, s+block) for every start s, dense loss).

    The dense prefix h_s is advanced one layer per candidate, so candidate s costs only the
    n - s - block layers after the gap (plus `block` layers once for the dense loss)."""
    keys = sorted(params["layers"], key=int)
    n = len(keys)
    if not 0 < block < n:
        raise CalibrationError(f"cannot remove a block of {block} layers from {n}")
    params = _place_model(params, mesh)  # every layer runs many times: placed once
    sums = np.zeros(n - block + 1)
    dense = 0.0
    head_params = _head_params(params)
    for s in _batches(len(tokens_NL), batch_size):
        tokens = _place(tokens_NL[s], mesh)
        h = _embed(cfg, params, tokens)
        for start in range(n - block + 1):
            x = h
            for key in keys[start + block :]:
                x = layer_apply(cfg, params["layers"][key], x)
            sums[start] += head_loss(cfg, head_params, x, tokens)
            if start < n - block:
                h = layer_apply(cfg, params["layers"][keys[start]], h)
        for key in keys[n - block :]:
            h = layer_apply(cfg, params["layers"][key], h)
        dense += head_loss(cfg, head_params, h, tokens)
    count = tokens_NL.shape[0] * (tokens_NL.shape[1] - 1)
    losses, dense = sums / count, dense / count
    if not (np.all(np.isfinite(losses)) and np.isfinite(dense)):
        raise CalibrationError("block-removal losses hold NaN or Inf (the model or the data is broken)")
    return losses, dense
