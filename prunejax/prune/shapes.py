"""Target shapes: from a pruning ratio by a documented rule, from the paper's presets, or explicit.

"Pruning ratio" is the fraction of the decoder layers' seven projection weights removed or
zeroed (`LlamaConfig.linear_params`); embeddings, norms and the LM head are not counted.

Rules for a ratio r:
  * depth: keep round(n_layers * (1 - r)) layers (at least 1); every layer holds the same number of
    projection weights, so this is the closest realizable ratio.
  Either rule refuses a ratio whose closest shape misses it by more than RATIO_TOLERANCE (0.05): 0.95 of
  a 2-layer model (which could only remove one layer, 0.5) is an error, not a 0.5 model labelled 0.95.
  Sparse methods realize the ratio exactly; an N:M pattern must equal it (the study checks).
  * width (heads kept): hidden and FFN sizes are multiples of `multiple` (default: the largest power
    of two <= 128 dividing both, i.e. hardware-friendly), hidden also a multiple of the q-head count
    (`hidden_step`: transformers refuses other hidden sizes); among all pairs, those whose realized ratio
    is within 0.005 of the closest one are candidates, and the pair whose kept fractions of hidden
    and FFN are most alike wins (then the larger hidden size). Balanced cuts are the neutral choice;
    the paper's own shapes are presets below, and `--target` overrides everything.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from prunejax.config import LLAMA_3_1_8B, LlamaConfig
from prunejax.prune.masks import PruneError

RATIO_TOLERANCE = 0.05  # the most a rule's shape may miss the ratio asked for (a larger miss is refused)


@dataclasses.dataclass(frozen=True)
class Target:
    """An explicit target architecture; None keeps the parent's size on that axis. `heads` counts q-heads."""

    hidden: int | None = None
    ffn: int | None = None
    layers: int | None = None
    heads: int | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in dataclasses.astuple(self))


TARGET_KEYS = tuple(f.name for f in dataclasses.fields(Target))


def architecture(cfg: LlamaConfig) -> tuple[int, ...]:
    """What identifies a parent for the presets (dtype, token ids and RoPE do not matter here)."""
    return (
        cfg.vocab_size,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
    )


# Published shapes at a ratio: (parent architecture, method, ratio) -> target.
PRESETS: dict[tuple[tuple[int, ...], str, float], Target] = {
    (architecture(LLAMA_3_1_8B), "minitron-depth", 0.5): Target(layers=16),
    (architecture(LLAMA_3_1_8B), "shortgpt", 0.5): Target(layers=16),
    (architecture(LLAMA_3_1_8B), "minitron-width", 0.5): Target(hidden=3072, ffn=9216),
    (architecture(LLAMA_3_1_8B), "sheared", 0.5): Target(hidden=3456, ffn=7808),
}


def parse_target(spec: str) -> Target:
    """'hidden=3072,ffn=9216' -> Target; unknown keys and non-positive sizes are errors."""
    values: dict[str, int] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in TARGET_KEYS:
            raise PruneError(f"target {spec!r}: expected KEY=INT items with KEY among {', '.join(TARGET_KEYS)}")
        try:
            values[key] = int(value)
        except ValueError:
            raise PruneError(f"target {spec!r}: {key} must be an integer, got {value!r}") from None
        if values[key] < 1:
            raise PruneError(f"target {spec!r}: {key} must be positive")
    if not values:
        raise PruneError(f"target {spec!r} names no size")
    return Target(**values)


def apply_target(cfg: LlamaConfig, target: Target) -> LlamaConfig:
    """The config of the target shape; a target larger than the model, or heads that break GQA, are errors."""
    sizes = {
        "hidden": ("hidden_size", target.hidden),
        "ffn": ("intermediate_size", target.ffn),
        "layers": ("num_hidden_layers", target.layers),
        "heads": ("num_attention_heads", target.heads),
    }
    changes: dict[str, Any] = {}
    for key, (field, value) in sizes.items():
        if value is None:
            continue
        if value > getattr(cfg, field):
            raise PruneError(f"target {key}={value} is larger than the model's {field}={getattr(cfg, field)}")
        changes[field] = value
    if target.heads is not None:
        group = cfg.num_attention_heads // cfg.num_key_value_heads
        if target.heads % group:
            raise PruneError(
                f"target heads={target.heads} must be a multiple of the GQA group size {group} "
                f"({cfg.num_attention_heads} q-heads / {cfg.num_key_value_heads} kv-heads)"
            )
        changes["num_key_value_heads"] = target.heads // group
    new = cfg.replace(**changes)
    check_loadable(new)
    return new


def check_loadable(target: LlamaConfig) -> None:
    """Refuse a target shape transformers cannot load: its LlamaConfig requires hidden_size %
    num_attention_heads == 0 even when head_dim is explicit, so such a MODEL_DIR would not load."""
    if target.hidden_size % target.num_attention_heads:
        raise PruneError(
            f"target hidden={target.hidden_size} is not a multiple of the {target.num_attention_heads} q-heads: "
            "transformers cannot load such a Llama (LlamaConfig requires hidden_size % num_attention_heads == 0); "
            "prune heads too (heads=) or choose another hidden size"
        )


def linear_ratio(parent: LlamaConfig, child: LlamaConfig) -> float:
    """Fraction of the parent's projection weights the child no longer has."""
    return 1.0 - child.linear_params() / parent.linear_params()


def check_realizable(ratio: float, realized: float, how: str) -> None:
    """Every rule refuses a ratio its closest shape misses by more than RATIO_TOLERANCE: a study labels a
    cell by the ratio asked for, so that label must be what was pruned, not a coarser shape's ratio."""
    if abs(realized - ratio) > RATIO_TOLERANCE:
        raise PruneError(
            f"ratio {ratio}: the closest realizable shape ({how}) prunes {realized:.4g}, more than "
            f"{RATIO_TOLERANCE} away; ask for a ratio within {RATIO_TOLERANCE} of one this model can reach"
        )


def depth_target(cfg: LlamaConfig, ratio: float) -> Target:
    n = cfg.num_hidden_layers
    keep = max(1, round(n * (1.0 - ratio)))
    if keep >= n:
        raise PruneError(f"ratio {ratio} removes no layer of a {n}-layer model")
    check_realizable(ratio, 1.0 - keep / n, f"{n - keep} of {n} layers removed; depth ratios are multiples of 1/{n}")
    return Target(layers=keep)


def default_multiple(cfg: LlamaConfig) -> int:
    for m in (128, 64, 32, 16, 8, 4, 2):
        if cfg.hidden_size % m == 0 and cfg.intermediate_size % m == 0:
            return m
    return 1


def hidden_step(cfg: LlamaConfig, multiple: int) -> int:
    """Step between candidate hidden sizes: a multiple of `multiple` (halved while needed) that the
    q-head count divides, because transformers' LlamaConfig refuses hidden % heads != 0 even with an
    explicit head_dim (a pruned MODEL_DIR must load there). At least four candidates are kept."""
    m = multiple
    while m > 1 and math.lcm(m, cfg.num_attention_heads) > cfg.hidden_size // 4:
        m //= 2
    return math.lcm(m, cfg.num_attention_heads)


def width_target(cfg: LlamaConfig, ratio: float, multiple: int | None = None, tolerance: float = 0.005) -> Target:
    """Hidden/FFN sizes (heads kept) whose realized ratio is closest to `ratio`, by the module rule."""
    m = multiple or default_multiple(cfg)
    candidates = []
    step = hidden_step(cfg, m)
    for hidden in range(step, cfg.hidden_size + 1, step):
        for ffn in range(m, cfg.intermediate_size + 1, m):
            child = cfg.replace(hidden_size=hidden, intermediate_size=ffn)
            err = abs(linear_ratio(cfg, child) - ratio)
            balance = abs(hidden / cfg.hidden_size - ffn / cfg.intermediate_size)
            candidates.append((err, balance, -hidden, ffn))
    best = min(c[0] for c in candidates)
    if best > RATIO_TOLERANCE:
        raise PruneError(
            f"no shape with hidden in multiples of {step} and FFN in multiples of {m} "
            f"comes within {RATIO_TOLERANCE} of ratio {ratio}"
        )
    _, _, neg_hidden, ffn = min((c for c in candidates if c[0] <= best + tolerance), key=lambda c: (c[1], c[2]))
    return Target(hidden=-neg_hidden, ffn=ffn)


def resolve_target(
    cfg: LlamaConfig, method: str, family: str, ratio: float | None, target: Target | None
) -> tuple[Target, str]:
    """The target for a structured method and how it was chosen ('explicit', 'preset' or 'rule')."""
    if target is not None and ratio is not None:
        raise PruneError("give either a ratio or a target, not both")
    if target is not None:
        apply_target(cfg, target)  # validates
        return target, "explicit"
    if ratio is None:
        raise PruneError("give a ratio or a target")
    if not 0.0 < ratio < 1.0:
        raise PruneError(f"pruning ratio must be in (0, 1), got {ratio}")
    preset = PRESETS.get((architecture(cfg), method, ratio))
    if preset is not None:
        return preset, "preset"
    return (depth_target(cfg, ratio) if family == "depth" else width_target(cfg, ratio)), "rule"
