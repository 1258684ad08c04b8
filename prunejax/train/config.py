"""TrainConfig: every knob of a training run, read from YAML plus `key=value` overrides; unknown keys are errors."""

from __future__ import annotations

import dataclasses
from typing import Any

from prunejax import yamlconf
from prunejax.config import ConfigError, as_float, load_yaml
from prunejax.kernels import IMPLEMENTATIONS


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Defaults are the paper's recipe (AdamW 0.9/0.95/1e-8, wd 0.1, peak 3e-4, 5% warmup, cosine to 10%, clip 1)."""

    __pydantic_config__ = yamlconf.STRICT

    # batch geometry: one optimizer step sees global_batch sequences of seq_len tokens
    seq_len: int = 128
    global_batch: int = 8
    grad_accum: int = 1  # micro-batches per step (global_batch / grad_accum sequences each)
    # optimizer
    peak_lr: float = 3e-4
    warmup_frac: float = 0.05
    final_lr_frac: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    # numerics: fp32 master weights always; compute in float32, bfloat16, or auto (bf16 on GPU/TPU, f32 on CPU)
    compute_dtype: str = "auto"
    remat: bool = False
    # attention implementation (prunejax.kernels.attention): auto (splash on TPU, cuDNN on GPU, the CPU
    # lowering on CPU), or one of xla, splash, cudnn, cpu to override the platform's choice
    attention: str = "auto"
    seed: int = 0
    # data: a token range of one split of the DATA_DIR
    data_split: str = "train"
    data_offset: int = 0
    data_count: int | None = None  # None = to the end of the split
    val_split: str = "validation"
    val_every: int = 0  # steps; 0 = only at the end
    val_batches: int = 4  # global batches of validation windows (0 = no validation)
    # bookkeeping
    log_every: int = 1
    ckpt_every: int = 0  # steps; 0 = only at the end (and on SIGTERM)
    keep_checkpoints: int = 3
    async_checkpoint: bool = False
    tensorboard: bool = True  # RUN_DIR/tensorboard/: metrics.jsonl's numbers as TensorBoard scalars (false: none)
    peak_tflops: float | None = None  # per device, for MFU; None = measured matmul peak on CPU, else unset
    # mesh (data * fsdp * tp = devices; -1 takes the rest)
    mesh_data: int = -1
    mesh_fsdp: int = 1
    mesh_tp: int = 1
    # how gradients are summed over the batch devices: "xla" (XLA's all-reduce / reduce-scatter; its
    # summation order depends on how devices split into processes) or "ordered" (each device's grads
    # of its rows, summed in one fixed order: N processes train the bits 1 process trains; costs a
    # replicated copy of the grads per device, so for small models and reproducibility checks)
    grad_reduce: str = "xla"
    # distillation from a teacher MODEL_DIR (off by default: the paper retrains with plain LM loss)
    distill_alpha: float = 0.0  # weight of the KL term; 1 - alpha weighs cross-entropy
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # also when built directly, not through yamlconf
            value = getattr(self, f.name)
            if f.type in yamlconf.FLOAT_TYPES and value is not None:
                object.__setattr__(self, f.name, as_float(f.name, value))
        for name in ("seq_len", "global_batch", "grad_accum", "log_every", "keep_checkpoints"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:  # bool is an int to Python
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.global_batch % self.grad_accum:
            raise ConfigError(f"global_batch {self.global_batch} is not a multiple of grad_accum {self.grad_accum}")
        if self.grad_reduce not in ("xla", "ordered"):
            raise ConfigError(f"grad_reduce must be xla or ordered, got {self.grad_reduce!r}")
        if self.compute_dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"compute_dtype must be auto, float32 or bfloat16, got {self.compute_dtype!r}")
        if self.attention not in IMPLEMENTATIONS:
            raise ConfigError(f"attention must be one of {', '.join(IMPLEMENTATIONS)}, got {self.attention!r}")
        if not 0 <= self.warmup_frac < 1 or not 0 <= self.final_lr_frac <= 1:
            raise ConfigError("warmup_frac must be in [0, 1) and final_lr_frac in [0, 1]")
        if not 0 <= self.distill_alpha <= 1 or self.distill_temperature <= 0:
            raise ConfigError("distill_alpha must be in [0, 1] and distill_temperature positive")
        if self.peak_lr <= 0 or self.clip_norm <= 0:
            raise ConfigError("peak_lr and clip_norm must be positive")

    @property
    def micro_batch(self) -> int:
        return self.global_batch // self.grad_accum

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    def replace(self, **changes: Any) -> TrainConfig:
        return from_dict({**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def from_dict(d: dict[str, Any], source: str = "config") -> TrainConfig:
    return yamlconf.build(TrainConfig, d, source, kind="train config")


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML (so 3e-4, true, null, 128 get their types)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key not in FIELDS:
        raise ConfigError(f"unknown train config key {key!r} in override {item!r}")
    return key, load_yaml(raw, f"override {item!r}")


def load(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A TrainConfig from a YAML file (or the defaults) with `key=value` overrides applied in order (a later
    one wins: callers layer them); an error names the file, and the overrides when there are any."""
    changes = dict(parse_override(o) for o in overrides)
    where = path or "train config defaults"
    if overrides:
        where += f" with overrides {' '.join(overrides)}"
    return yamlconf.build(TrainConfig, {**(yamlconf.read(path) if path else {}), **changes}, where, kind="train config")
