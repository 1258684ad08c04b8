"""The call every calibrated pruning method shares, written once.

A user calls `method(cfg, params, tokens_NL, *, ratio=, target=, pattern=, batch_size=, mesh=, **options)`;
the method is written as `fn(cfg, params, tokens_NL, req, **options)` under `@pruning_method`, where `req` is
the `Request` those five keywords make and `options` are the method's own (SparseGPT's `block_size`, OWL's
`owl_m`). Which of the five a method accepts beyond `ratio` it checks itself (a sparse method refuses a
`target`, a structural one a `pattern`), with the message the CLI shows.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

from jax.sharding import Mesh


@dataclasses.dataclass(frozen=True)
class Request:
    ratio: float | None = None  # fraction of the counted projection weights to remove
    target: Any = None  # or an explicit shape (structural methods: layers=, hidden=, ffn=, heads=)
    pattern: tuple[int, int] | None = None  # N:M semi-structured sparsity (sparse methods)
    batch_size: int = 8  # calibration sequences per forward pass
    mesh: Mesh | None = None  # the devices calibration batches are split over (None: the default device)


_COMMON = [
    inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
    for f in dataclasses.fields(Request)
]


def pruning_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn(cfg, params, tokens_NL, req, **options)` as `method(cfg, params, tokens_NL=None, *, ratio=None,
    target=None, pattern=None, batch_size=8, mesh=None, **options)`."""
    own = list(inspect.signature(fn).parameters.values())
    if [p.name for p in own[:4]] != ["cfg", "params", "tokens_NL", "req"]:
        raise TypeError(f"{fn.__name__} must take (cfg, params, tokens_NL, req, ...)")
    options = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[4:]]

    @functools.wraps(fn)
    def method(
        cfg: Any,
        params: Any,
        tokens_NL: Any = None,
        *,
        ratio: float | None = None,
        target: Any = None,
        pattern: tuple[int, int] | None = None,
        batch_size: int = 8,
        mesh: Mesh | None = None,
        **kwargs: Any,
    ) -> Any:
        return fn(cfg, params, tokens_NL, Request(ratio, target, pattern, batch_size, mesh), **kwargs)

    first = [p.replace(default=None) if p.name == "tokens_NL" else p for p in own[:3]]
    method.__signature__ = inspect.Signature(
        [*first, *_COMMON, *options], return_annotation=inspect.signature(fn).return_annotation
    )  # type: ignore[attr-defined]
    del method.__wrapped__  # type: ignore[attr-defined]  # the signature above is the one to show
    return method
