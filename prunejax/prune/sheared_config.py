"""Settings of the Sheared-LLaMA pruning stage, and the step counts a token budget gives.

Defaults are the original recipe (Xia et al. 2023, LLM-Shearing `pruning.sh`): 32 x 4096-token
sequences per step, 3200 steps (~0.42B tokens), lr 1e-4 for the weights, 1.0 for the masks and the
Lagrange multipliers, Lagrangian warmup over 20% of the steps, lr warmup over 10%. Warmups are
fractions of the steps so a smaller budget scales them; a budget too small to warm up the
Lagrangian is an error rather than a silent degenerate run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prunejax import yamlconf
from prunejax.config import ConfigError
from prunejax.prune.masks import PruneError


@dataclasses.dataclass(frozen=True)
class ShearedConfig:
    """Every setting of the pruning stage; defaults are the original recipe (fractions of the budget)."""

    __pydantic_config__ = yamlconf.STRICT

    seq_len: int = 4096
    batch_size: int = 32  # sequences per step: 32 x 4096 = 131,072 tokens; 0.42B tokens = 3200 steps
    lr: float = 1e-4  # model weights: AdamW, warmup then cosine
    lr_warmup_frac: float = 0.1  # 320 of 3200 steps
    lr_final_frac: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    mask_lr: float = 1.0  # Adam on the log-alphas
    lambda_lr: float = 1.0  # Adam ascent on the Lagrange multipliers
    lagrangian_warmup_frac: float = 0.2  # target sparsity ramps from 0 over 640 of 3200 steps
    min_lagrangian_warmup_steps: int = 4
    mask_init: float = 5.0  # initial log-alpha (clipped to log 100): gates start open
    fold_tolerance: float = 0.05  # allowed |expected - target| as a fraction of the full size
    compute_dtype: str = "float32"
    remat: bool = False
    seed: int = 0
    data_split: str = "train"
    data_offset: int = 0
    mesh_data: int = -1  # data x fsdp x tp = devices; -1 takes the rest
    mesh_fsdp: int = 1
    mesh_tp: int = 1
    grad_reduce: str = "xla"  # or "ordered": N processes train the same bits as 1 (train's grad_reduce)
    log_every: int = 10
    ckpt_every: int = 100  # steps between checkpoints when a run_dir is given

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "min_lagrangian_warmup_steps", "log_every", "ckpt_every"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:  # bool is an int to Python
                raise ConfigError(f"sheared: {name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 < self.lagrangian_warmup_frac < 1 or not 0 <= self.lr_warmup_frac < 1:
            raise ConfigError("sheared: lagrangian_warmup_frac must be in (0, 1) and lr_warmup_frac in [0, 1)")
        if not 0 <= self.lr_final_frac <= 1:
            raise ConfigError(f"sheared: lr_final_frac must be in [0, 1], got {self.lr_final_frac}")
        if min(self.lr, self.mask_lr, self.lambda_lr, self.clip_norm) <= 0:
            raise ConfigError("sheared: lr, mask_lr, lambda_lr and clip_norm must be positive")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"sheared: compute_dtype must be float32 or bfloat16, got {self.compute_dtype!r}")
        if self.data_offset < 0 or self.fold_tolerance < 0:
            raise ConfigError("sheared: data_offset and fold_tolerance must be non-negative")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def load_config(path: str | None = None, **overrides: Any) -> ShearedConfig:
    """ShearedConfig from a YAML mapping (or the defaults) plus overrides; unknown keys are errors."""
    return yamlconf.load(ShearedConfig, path, overrides, source="sheared config")


@dataclasses.dataclass(frozen=True)
class Plan:
    """The step counts a token budget gives (the lr warmup is the train engine's: `optim.warmup_steps`)."""

    steps: int
    lagrangian_warmup: int
    tokens: int  # tokens actually consumed (steps * batch * seq_len)


def plan(sc: ShearedConfig, prune_tokens: int) -> Plan:
    steps = prune_tokens // sc.tokens_per_step
    lag = int(round(sc.lagrangian_warmup_frac * steps))
    if lag < sc.min_lagrangian_warmup_steps or steps - lag < 1:
        need = -(-sc.min_lagrangian_warmup_steps // sc.lagrangian_warmup_frac) * sc.tokens_per_step
        raise PruneError(
            f"prune token budget {prune_tokens:,} gives {steps} step(s) of {sc.batch_size} x {sc.seq_len} tokens; "
            f"the Lagrangian warmup ({sc.lagrangian_warmup_frac} of the steps = {lag}) needs at least "
            f"{sc.min_lagrangian_warmup_steps} steps: give at least {int(need):,} tokens"
        )
    return Plan(steps, lag, steps * sc.tokens_per_step)
