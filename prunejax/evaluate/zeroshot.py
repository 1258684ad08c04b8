"""Zero-shot multiple choice by continuation log-likelihood, tokenized as lm-evaluation-harness does.

`encode_pair` reproduces the harness's `TemplateLM` rules for causal models so that our numbers
and the harness's agree token for token: trailing spaces of the context move to the continuation;
the continuation's tokens are those of tokenize(context + continuation) past the tokens of
tokenize(context) (both with the tokenizer's default special tokens, none added when the text
already starts with the BOS string); an empty context becomes the prefix token (BOS, else EOS).
A request longer than the model is left-truncated to max_len + 1 tokens, as the harness does.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax.sharding import Mesh

from prunejax.config import LlamaConfig
from prunejax.evaluate import tasks
from prunejax.evaluate.loglik import Score, Span, score_spans
from prunejax.hf import Params


def prefix_token_id(tokenizer: Any) -> int:
    """The token an empty context is replaced by: BOS, else EOS (the harness's choice)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition an empty context on")
    return int(token)


def tok_encode(tokenizer: Any, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """Token ids with the tokenizer's default special tokens, unless `text` already starts with BOS."""
    if add_special_tokens is None:
        bos = tokenizer.decode([prefix_token_id(tokenizer)])
        add_special_tokens = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) for one request."""
    if context == "":
        cont = tok_encode(tokenizer, continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tok_encode(tokenizer, context + continuation)
    ctx = tok_encode(tokenizer, context)
    return ctx, whole[len(ctx) :]


def to_span(context_ids: list[int], continuation_ids: list[int], max_len: int) -> Span:
    """The scoring span: left-truncated to max_len + 1 tokens (the last token is never an input)."""
    if not continuation_ids:
        raise ValueError("a request has an empty continuation after tokenization")
    tokens = (context_ids + continuation_ids)[-(max_len + 1) :]
    first = len(tokens) - len(continuation_ids)
    if first < 1:
        raise ValueError(f"a continuation of {len(continuation_ids)} tokens does not fit in {max_len} positions")
    return Span(tuple(tokens), first)


def loglikelihoods(
    cfg: LlamaConfig,
    params: Params,
    tokenizer: Any,
    pairs: list[tuple[str, str]],
    *,
    max_len: int | None = None,
    **kw: Any,
) -> list[Score]:
    """log p(continuation | context) and greedy flags for (context, continuation) string pairs."""
    max_len = max_len or cfg.max_position_embeddings
    spans = [to_span(*encode_pair(tokenizer, c, x), max_len) for c, x in pairs]
    return score_spans(cfg, params, spans, max_len=max_len, **kw)


def evaluate_task(
    cfg: LlamaConfig,
    params: Params,
    tokenizer: Any,
    name: str,
    task_data: str,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    mesh: Mesh | None = None,
    dtype: Any = jnp.float32,
) -> dict[str, Any]:
    """acc, acc_norm (with standard errors), the paper's metric and the document count of one task."""
    path, requests = tasks.load_task(name, task_data, limit)
    pairs = [p for r in requests for p in r.pairs]
    scores = loglikelihoods(cfg, params, tokenizer, pairs, batch_size=batch_size, mesh=mesh, dtype=dtype, progress=name)
    per_doc, i = [], 0
    for r in requests:
        per_doc.append(tasks.doc_metrics(r, [s.logprob for s in scores[i : i + len(r.pairs)]]))
        i += len(r.pairs)
    task = tasks.get_task(name)
    result = tasks.aggregate(per_doc)
    return {**result, "metric": task.metric, "score": result[task.metric], "docs": len(requests), "file": path}


def evaluate_tasks(
    cfg: LlamaConfig, params: Params, tokenizer: Any, names: list[str], task_data: str, **kw: Any
) -> dict[str, Any]:
    """Every task's results plus `average`: the mean of each task's paper metric."""
    results = {name: evaluate_task(cfg, params, tokenizer, name, task_data, **kw) for name in names}
    average = sum(r["score"] for r in results.values()) / len(results)
    return {"tasks": results, "average": average}
