"""Perplexity over token windows, and validation loss on a DATA_DIR's held-out split.

Windows (the one definition used everywhere, `windows()`): a token stream of n tokens is cut
into windows of `seq_len` tokens starting at 0, stride, 2*stride, ... until a window reaches the
end of the stream. Every token is predicted from the tokens before it *inside its window*, and
each token is scored exactly once:
  * stride == seq_len (default, "non-overlapping windows" as in the paper): window k is tokens
    [k*L, (k+1)*L); its first token is context only and is not scored, so each full window scores
    L-1 tokens; the last window may be shorter.
  * stride < seq_len (sliding): a window scores only the tokens no earlier window scored (the
    first window scores tokens 1..L-1), so each scored token sees at least L-stride tokens of
    context (Hugging Face's "strided perplexity"). Only token 0 is never scored.
Perplexity is exp(mean NLL per scored token); validation loss is that mean NLL. A text file is one
stream, tokenized whole with the model's tokenizer as `tokenizer(text)` does by default (a BOS is
prepended only if the tokenizer itself adds one). lm-eval's `loglikelihood_rolling` is a different
scheme (every token scored, the first conditioned on a prefix token); the harness adapter
implements it separately.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from prunejax import storage
from prunejax.config import LlamaConfig
from prunejax.data.store import DataError, TokenStore
from prunejax.evaluate.loglik import sum_logprobs
from prunejax.hf import Params


def check_seq_len(cfg: LlamaConfig, seq_len: int, stride: int | None = None) -> int:
    """Validate a window length (and stride) against the model; returns the stride."""
    if seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2 (one context and one scored token), got {seq_len}")
    if seq_len > cfg.max_position_embeddings:
        raise ValueError(
            f"--seq-len {seq_len} is longer than the model's {cfg.max_position_embeddings} positions "
            "(max_position_embeddings)"
        )
    stride = seq_len if stride is None else stride
    if not 1 <= stride <= seq_len:
        raise ValueError(f"--stride must be between 1 and --seq-len ({seq_len}), got {stride}")
    return stride


def windows(n_tokens: int, seq_len: int, stride: int | None = None) -> np.ndarray:
    """[W, 3] int64 rows (start, first, end): feed tokens[start:end], score tokens[first:end]."""
    stride = seq_len if stride is None else stride
    rows = []
    start, scored_to = 0, 1  # token 0 has no context
    while start < n_tokens:
        end = min(start + seq_len, n_tokens)
        first = max(start + 1, scored_to)
        if end > first:
            rows.append((start, first, end))
        scored_to = max(scored_to, end)
        if end == n_tokens:
            break
        start += stride
    return np.asarray(rows, np.int64).reshape(-1, 3)


def stream_nll(
    cfg: LlamaConfig,
    params: Params,
    tokens: np.ndarray,
    seq_len: int,
    *,
    stride: int | None = None,
    batch_size: int = 8,
    mesh: Mesh | None = None,
    dtype: Any = jnp.float32,
    name: str = "tokens",
) -> dict[str, Any]:
    """Mean NLL, perplexity, scored-token and window counts of one token stream."""
    stride = check_seq_len(cfg, seq_len, stride)
    tokens = np.asarray(tokens, np.int32)
    if tokens.size < 2:
        raise ValueError(f"{name}: needs at least 2 tokens to score, has {tokens.size}")
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise ValueError(f"{name}: token ids outside the model's vocabulary [0, {cfg.vocab_size})")
    wins = windows(tokens.size, seq_len, stride)
    total, count = sum_logprobs(
        cfg, params, tokens, wins, seq_len, batch_size=batch_size, mesh=mesh, dtype=dtype, progress=name
    )
    nll = -total / count
    return {
        "nll": nll,
        "perplexity": float(np.exp(nll)),
        "scored_tokens": count,
        "tokens": int(tokens.size),
        "windows": len(wins),
    }


def tokenize_file(tokenizer: Any, path: str) -> np.ndarray:
    """A text file as one token stream (UTF-8, tokenized whole with the tokenizer's defaults)."""
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: text file not found")
    try:
        text = storage.read_file(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text-mode open() reads
    if not text.strip():
        raise ValueError(f"{path}: the text is empty")
    # verbose=False: the text is meant to be longer than the model (it is cut into windows)
    return np.asarray(tokenizer(text, verbose=False)["input_ids"], np.int32)


def text_perplexity(
    cfg: LlamaConfig, params: Params, tokenizer: Any, files: list[str], seq_len: int, **kw: Any
) -> dict[str, dict[str, Any]]:
    """Perplexity per text file (keyed by the path as given)."""
    return {path: stream_nll(cfg, params, tokenize_file(tokenizer, path), seq_len, name=path, **kw) for path in files}


def data_dir_nll(
    cfg: LlamaConfig,
    params: Params,
    data_dir: str,
    seq_len: int,
    *,
    max_tokens: int | None = None,
    split: str = "validation",
    offset: int = 0,
    **kw: Any,
) -> dict[str, Any]:
    """`stream_nll` over tokens [offset, offset+max_tokens) of a DATA_DIR split, plus provenance."""
    store = TokenStore(data_dir)
    if store.vocab_size > cfg.vocab_size:
        raise DataError(f"{data_dir}: vocabulary of {store.vocab_size} ids exceeds the model's {cfg.vocab_size}")
    available = store.num_tokens(split) - offset
    count = available if max_tokens is None else min(max_tokens, available)
    tokens = store.read(split, offset, count)
    result = stream_nll(cfg, params, tokens, seq_len, name=f"{data_dir}:{split}", **kw)
    return {**result, "split": split, "offset": offset, "fingerprint": store.fingerprint}


def validation_loss(
    cfg: LlamaConfig,
    params: Params,
    data_dir: str,
    seq_len: int,
    max_tokens: int | None = None,
    batch_size: int = 8,
    *,
    mesh: Mesh | None = None,
    dtype: Any = jnp.float32,
) -> float:
    """Mean NLL per scored token on a DATA_DIR's validation split (non-overlapping windows)."""
    kw = {"batch_size": batch_size, "mesh": mesh, "dtype": dtype}
    return data_dir_nll(cfg, params, data_dir, seq_len, max_tokens=max_tokens, **kw)["nll"]
