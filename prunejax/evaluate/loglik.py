"""The log-likelihood engine: per-token log-probs of token sequences, batched, jitted and sharded.

Everything evaluation computes (perplexity, validation loss, multiple-choice scores, the
lm-eval adapter) reduces to one request type, `Span(tokens, first)`: score `tokens[first:]`,
each token given all the tokens before it (`first >= 1`). Requests are sorted by length, cut
into batches of `batch_size` rows, right-padded to a small set of bucket lengths (so the jitted
function compiles a handful of times) and the batch dimension is sharded over the mesh's
(data, fsdp) axes. Sums are accumulated in float64 on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from prunejax import model
from prunejax.config import LlamaConfig
from prunejax.distributed import to_host, tree_to_host
from prunejax.hf import Params
from prunejax.sharding import batch_sharding, batch_shards

MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class Span:
    """Score `tokens[first:]`, each token conditioned on everything before it."""

    tokens: tuple[int, ...]
    first: int

    def __post_init__(self) -> None:
        if not 1 <= self.first <= len(self.tokens):
            raise ValueError(f"span of {len(self.tokens)} tokens cannot start scoring at {self.first}")


@dataclasses.dataclass(frozen=True)
class Score:
    """Sum of log-probs of the scored tokens, their count, and whether each was the argmax."""

    logprob: float
    count: int
    greedy: bool


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def token_logprobs(
    cfg: LlamaConfig, params: Params, tokens_BL: jax.Array, *, dtype: Any = jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """log p(tokens[:, t+1] | tokens[:, :t+1]) and argmax == tokens[:, t+1], both [B, L-1]."""
    logits_BLV = model.forward(cfg, params, tokens_BL, dtype=dtype)[:, :-1]
    targets_BL = tokens_BL[:, 1:]
    target_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
    logprob_BL = target_BL - jax.nn.logsumexp(logits_BLV, axis=-1)
    greedy_BL = jnp.argmax(logits_BLV, axis=-1) == targets_BL
    return logprob_BL, greedy_BL


def bucket_length(n: int, cap: int) -> int:
    """Padded length for a batch whose longest sequence has `n` tokens: a power of two (>= 16),
    or a multiple of 512 above 512, never above `cap` unless `n` itself is."""
    b = max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length()) if n <= 512 else 512 * math.ceil(n / 512)
    return max(n, min(b, cap))


def batch_rows(batch_size: int, mesh: Mesh | None) -> int:
    """`batch_size` rounded up to a multiple of the devices the batch is sharded over."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if mesh is None:
        return batch_size
    shards = batch_shards(mesh)
    return shards * math.ceil(batch_size / shards)


def score_spans(
    cfg: LlamaConfig,
    params: Params,
    spans: Sequence[Span],
    *,
    batch_size: int = 8,
    mesh: Mesh | None = None,
    dtype: Any = jnp.float32,
    max_len: int | None = None,
    progress: str | None = None,
) -> list[Score]:
    """Score every span (results in input order); `max_len` caps the padded length (default: the
    model's max positions + 1, since the last token of a span is never an input position)."""
    cap = (max_len or cfg.max_position_embeddings) + 1
    too_long = [len(s.tokens) for s in spans if len(s.tokens) > cap]
    if too_long:
        raise ValueError(f"a request of {max(too_long)} tokens exceeds the model's {cap - 1} positions")
    rows = batch_rows(batch_size, mesh)
    order = sorted(range(len(spans)), key=lambda i: -len(spans[i].tokens))
    out: list[Score | None] = [None] * len(spans)
    sharding = batch_sharding(mesh) if mesh is not None else None
    bar = tqdm(total=len(spans), desc=progress, unit="seq", disable=progress is None, leave=False)
    for start in range(0, len(order), rows):
        idx = order[start : start + rows]
        length = bucket_length(max(len(spans[i].tokens) for i in idx), cap)
        tokens = np.zeros((rows, length), np.int32)
        for r, i in enumerate(idx):
            tokens[r, : len(spans[i].tokens)] = spans[i].tokens
        tokens_BL = jax.device_put(tokens, sharding) if sharding is not None else jnp.asarray(tokens)
        logprob_BL, greedy_BL = tree_to_host(token_logprobs(cfg, params, tokens_BL, dtype=dtype))
        for r, i in enumerate(idx):
            s = spans[i]
            # target position t holds token t+1, so tokens[first:] are targets first-1 .. n-2
            lp = logprob_BL[r, s.first - 1 : len(s.tokens) - 1].astype(np.float64)
            out[i] = Score(float(lp.sum()), int(lp.size), bool(greedy_BL[r, s.first - 1 : len(s.tokens) - 1].all()))
        bar.update(len(idx))
    bar.close()
    return out  # type: ignore[return-value]


def sum_logprobs(
    cfg: LlamaConfig,
    params: Params,
    stream: np.ndarray,
    windows: np.ndarray,
    length: int,
    *,
    batch_size: int = 8,
    mesh: Mesh | None = None,
    dtype: Any = jnp.float32,
    progress: str | None = None,
) -> tuple[float, int]:
    """Total log-prob and count of scored tokens over windows of a token stream. `windows` is
    [W, 3] rows (start, first, end) in stream coordinates: the window feeds stream[start:end]
    and scores tokens first..end-1. Windows are padded to `length`, so this compiles once."""
    rows = batch_rows(batch_size, mesh)
    sharding = batch_sharding(mesh) if mesh is not None else None
    target_pos = np.arange(length - 1)[None, :]  # target position t holds token t+1
    total, count = 0.0, 0
    bar = tqdm(total=len(windows), desc=progress, unit="win", disable=progress is None, leave=False)
    for lo in range(0, len(windows), rows):
        chunk = windows[lo : lo + rows]
        tokens = np.zeros((rows, length), np.int32)
        for r, (start, _, end) in enumerate(chunk):
            tokens[r, : end - start] = stream[start:end]
        tokens_BL = jax.device_put(tokens, sharding) if sharding is not None else jnp.asarray(tokens)
        logprob_BL = to_host(token_logprobs(cfg, params, tokens_BL, dtype=dtype)[0]).astype(np.float64)
        first = (chunk[:, 1] - chunk[:, 0])[:, None]
        end = (chunk[:, 2] - chunk[:, 0])[:, None]
        keep = (target_pos >= first - 1) & (target_pos < end - 1)
        total += float((logprob_BL[: len(chunk)] * keep).sum())
        count += int(keep.sum())
        bar.update(len(chunk))
    bar.close()
    return total, count


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def next_token(
    cfg: LlamaConfig, params: Params, tokens_BL: jax.Array, last_B: jax.Array, *, dtype: Any = jnp.float32
) -> jax.Array:
    """The argmax token [B] after position `last_B` of each right-padded row (greedy decoding)."""
    logits_BLV = model.forward(cfg, params, tokens_BL, dtype=dtype)
    logits_BV = jnp.take_along_axis(logits_BLV, last_B[:, None, None], axis=1)[:, 0]
    return jnp.argmax(logits_BV, axis=-1)
