"""lm-evaluation-harness adapter: any prunejax model as the harness model type `prunejax`.

    import prunejax.evaluate, lm_eval
    lm_eval.simple_evaluate(model="prunejax", model_args="pretrained=MODEL_DIR,batch_size=8", tasks=[...])

Tokenization of (context, continuation) pairs is the harness's own (`TemplateLM`); scoring goes
through prunejax's batched, jitted, sharded engine. `loglikelihood_rolling` uses the harness's
rolling windows (every token scored once, the first conditioned on the prefix token, each window
with as much context as fits). `generate_until` is greedy, without a KV cache (one forward pass
per generated token), meant for short answers. This module needs lm-eval (`prunejax[eval]`).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import lm_eval.models  # noqa: F401  (the harness only imports its built-ins into an empty registry)
import numpy as np
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from prunejax.evaluate import zeroshot
from prunejax.evaluate.loglik import Span, bucket_length, next_token, score_spans
from prunejax.evaluate.source import load_model
from prunejax.hf import DTYPES
from prunejax.sharding import make_mesh

DEFAULT_MAX_GEN_TOKS = 256


@register_model("prunejax")
class PrunejaxLM(TemplateLM):
    """A prunejax model (MODEL_DIR, HF dir, RUN_DIR or GGUF), data-parallel over all local devices."""

    def __init__(
        self,
        pretrained: str,
        batch_size: int | str = 8,
        max_length: int | None = None,
        dtype: str = "float32",
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        **_: Any,
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        self.mesh = make_mesh()
        self.model = load_model(pretrained, mesh=self.mesh)
        if self.model.tokenizer is None:
            raise ValueError(f"{pretrained}: no tokenizer files beside the model; the harness needs one")
        self.tokenizer = self.model.tokenizer
        self.cfg, self.params = self.model.cfg, self.model.params
        auto = isinstance(batch_size, str) and batch_size.startswith("auto")  # no autotuning: fixed shapes
        self.batch_size = 8 if auto else int(batch_size)
        self.max_length = int(max_length or self.cfg.max_position_embeddings)
        self.max_gen_toks = int(max_gen_toks)
        self.compute_dtype = jnp.dtype(DTYPES[dtype])

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        return zeroshot.prefix_token_id(self.tokenizer)

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return zeroshot.tok_encode(self.tokenizer, string, add_special_tokens)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _score(self, spans: list[Span], desc: str | None) -> list[Any]:
        kw = {"batch_size": self.batch_size, "mesh": self.mesh, "dtype": self.compute_dtype}
        return score_spans(self.cfg, self.params, spans, max_len=self.max_length, progress=desc, **kw)

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **_: Any
    ) -> list[tuple[float, bool]]:
        spans = [zeroshot.to_span(ctx, cont, self.max_length) for _, ctx, cont in requests]
        out = []
        for (key, _, _), s in zip(requests, self._score(spans, None if disable_tqdm else "loglikelihood"), strict=True):
            answer = (s.logprob, s.greedy)
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        spans, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            windows = utils.get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for ctx, cont in map(utils.make_disjoint_window, windows):
                spans.append(zeroshot.to_span(ctx, cont, self.max_length))
                owner.append(i)
        totals = np.zeros(len(requests))
        for i, s in zip(owner, self._score(spans, None if disable_tqdm else "rolling"), strict=True):
            totals[i] += s.logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, float(total))
        return [float(t) for t in totals]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, desc="generate_until", disable=disable_tqdm):
            context, gen_kwargs = req.args
            text = self._greedy(context, dict(gen_kwargs))
            self.cache_hook.add_partial("generate_until", req.args, text)
            out.append(text)
        return out

    def _greedy(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        if gen_kwargs.get("do_sample") and gen_kwargs.get("temperature", 1.0) > 0:
            raise ValueError("the prunejax adapter decodes greedily only (do_sample=True was requested)")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        ids = self.tok_encode(context)[-(self.max_length - max_new) :] if max_new < self.max_length else []
        ids = ids or [self.prefix_token_id]
        generated: list[int] = []
        while len(generated) < max_new and len(ids) < self.max_length:
            length = bucket_length(len(ids), self.max_length)
            tokens = np.zeros((1, length), np.int32)
            tokens[0, : len(ids)] = ids
            last = np.asarray([len(ids) - 1], np.int32)
            token = int(next_token(self.cfg, self.params, tokens, last, dtype=self.compute_dtype)[0])
            if token == self.eot_token_id:
                break
            generated.append(token)
            ids.append(token)
            text = self.tok_decode(generated)
            if any(stop in text for stop in until):
                break
        text = self.tok_decode(generated)
        for stop in until:
            text = text.split(stop)[0]
        return text
