"""LlamaConfig: a frozen mirror of Hugging Face's Llama `config.json`, plus counts from shapes."""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import math
import os
from typing import Any

ROPE_TYPES = ("default", "linear", "llama3")

# Keys of HF's config.json that carry no information the model needs; read and dropped.
_IGNORED_KEYS = frozenset(
    {
        "architectures",
        "model_type",
        "transformers_version",
        "hidden_act",
        "initializer_range",
        "pretraining_tp",
        "use_cache",
        "pad_token_id",
        "attention_dropout",
        "_name_or_path",
        "is_llama_config",
        "rope_interleaved",
        "tie_embeddings",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "layer_types",
        "use_return_dict",
    }
)


class ConfigError(ValueError):
    """A config that is malformed or describes a model prunejax does not support."""


def load_yaml(text: str | bytes, where: str) -> Any:
    """One YAML document, read strictly: a key given twice in one mapping is an error naming `where` and the
    line (PyYAML keeps the last silently), and `3e-4` is a float as in YAML 1.2 (PyYAML's YAML 1.1 reads a
    number without a dot as a string). Invalid YAML is a ConfigError too."""
    import yaml

    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({e})") from None
    except _DuplicateKey as e:
        raise ConfigError(f"{where}: {e}") from None


class _DuplicateKey(Exception):
    pass


@functools.cache
def _strict_loader() -> type:
    """PyYAML's SafeLoader with the two rules of `load_yaml` (built on first use: yaml is imported lazily)."""
    import re

    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key, collections.abc.Hashable):
                    continue  # merge keys are PyYAML's to expand; an unhashable key is its error to raise
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(f"line {line}: key {key!r} is given twice (also on line {seen[key]})")
                seen[key] = line
            return super().construct_mapping(node, deep)

    StrictLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+.0123456789"),
    )
    return StrictLoader


def parse_tokens(value: Any, minimum: int = 0) -> int:
    """A token count: 200000, '2e5', '300k', '1.5M', '50B' -> int (a whole number >= `minimum`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        count = float(value)
    else:
        text = str(value).strip().lower().replace("_", "").replace(",", "")
        scale = {"k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}.get(text[-1:], 1)
        try:
            count = float(text[:-1] if scale != 1 else text) * scale
        except ValueError:
            raise ConfigError(f"not a token count: {value!r}") from None
    if not math.isfinite(count) or count != int(count) or count < minimum:
        raise ConfigError(f"a token count must be a whole number >= {minimum}, got {value!r}")
    return int(count)


def token_arg(text: str) -> int:
    """`parse_tokens` as an argparse type (a positive count; the message reaches the user)."""
    import argparse

    try:
        return parse_tokens(text, minimum=1)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    """An argparse type for counts that must be at least 1 (batch sizes, lengths)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def as_float(name: str, value: Any) -> float:
    """Finite floats from JSON or YAML; PyYAML reads '1e-05' (no dot) as a string, so numeric strings are
    accepted. NaN and Inf (`nan`, `.inf`) are errors: no knob of a model or a run means anything there."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return out


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency rule. `rope_type` default/linear/llama3, as in HF's `rope_scaling`."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            object.__setattr__(self, name, as_float(f"rope_scaling.{name}", getattr(self, name)))
        if self.rope_type not in ROPE_TYPES:
            raise ConfigError(f"unknown rope_type {self.rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ConfigError("llama3 rope scaling needs high_freq_factor > low_freq_factor")

    def to_hf(self) -> dict[str, Any] | None:
        if self.rope_type == "default":
            return None
        out: dict[str, Any] = {"rope_type": self.rope_type, "factor": self.factor}
        if self.rope_type == "llama3":
            out.update(
                low_freq_factor=self.low_freq_factor,
                high_freq_factor=self.high_freq_factor,
                original_max_position_embeddings=self.original_max_position_embeddings,
            )
        return out


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The architecture of one Llama model. `head_dim` is explicit: width pruning breaks hidden/heads."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    torch_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        for name in ("rms_norm_eps", "rope_theta"):
            object.__setattr__(self, name, as_float(name, getattr(self, name)))
        if isinstance(self.eos_token_id, list):  # keep the config hashable (jit caches on it)
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.torch_dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"torch_dtype must be float32, bfloat16 or float16, got {self.torch_dtype!r}")

    # ---- HF config.json ------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        """Read either the classic keys (`rope_scaling`, `rope_theta`, `torch_dtype`) or transformers-5's
        (`rope_parameters`, `dtype`). Unknown keys are errors so a typo never goes unnoticed."""
        d = dict(d)
        if d.get("model_type", "llama") != "llama":
            raise ConfigError(f"model_type {d['model_type']!r} is not 'llama'")
        for flag in ("attention_bias", "mlp_bias"):
            if d.pop(flag, False):
                raise ConfigError(f"{flag}=true is not supported (Llama-3 has no biases)")
        if d.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"hidden_act {d['hidden_act']!r} is not supported; Llama uses silu")
        rope = d.pop("rope_scaling", None)
        params = d.pop("rope_parameters", None)
        if params:
            params = dict(params)
            theta = params.pop("rope_theta", None)
            if theta is not None and d.get("rope_theta", theta) != theta:
                raise ConfigError(f"rope_theta {d['rope_theta']} contradicts rope_parameters.rope_theta {theta}")
            if theta is not None:
                d["rope_theta"] = theta
            if rope is None and params.get("rope_type", "default") != "default":
                rope = params
        dtype = d.pop("dtype", None)
        if dtype is not None:
            d.setdefault("torch_dtype", dtype)
        d.setdefault("torch_dtype", "float32")
        if d["torch_dtype"] is None:
            d["torch_dtype"] = "float32"
        for key in _IGNORED_KEYS:
            d.pop(key, None)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        if "head_dim" not in d or d["head_dim"] is None:
            d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        d.setdefault("num_key_value_heads", d.get("num_attention_heads"))
        d["rope_scaling"] = _rope_from_hf(rope)
        return cls(**d)

    def to_hf_dict(self) -> dict[str, Any]:
        """config.json in the classic form, which every transformers version reads."""
        d = dataclasses.asdict(self)
        d["rope_scaling"] = self.rope_scaling.to_hf()
        if isinstance(self.eos_token_id, tuple):
            d["eos_token_id"] = list(self.eos_token_id)
        d.update(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            hidden_act="silu",
            attention_bias=False,
            mlp_bias=False,
            initializer_range=0.02,
        )
        return d

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> LlamaConfig:
        """A config.json, or a YAML file of its keys (a model shape for `train --scratch`, a study's parent).
        Every problem is a ConfigError naming `path`."""
        from prunejax import storage

        is_json = str(path).endswith(".json")
        try:
            text = storage.read_file(str(path)).decode()  # a local file or a gs:// object
            d = json.loads(text) if is_json else load_yaml(text, str(path))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such model config file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: a model config is a mapping of config.json keys, got {type(d).__name__}")
        try:
            return cls.from_hf_dict(d)
        except (ConfigError, TypeError, KeyError) as e:
            raise ConfigError(f"{path}: {e}") from e

    def replace(self, **changes: Any) -> LlamaConfig:
        return dataclasses.replace(self, **changes)

    # ---- counts from shapes --------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def layer_linear_params(self) -> int:
        """Weights of the seven projections of one decoder layer (what the pruning ratio counts)."""
        d, f = self.hidden_size, self.intermediate_size
        return d * (2 * self.q_dim + 2 * self.kv_dim) + 3 * d * f

    def linear_params(self) -> int:
        return self.num_hidden_layers * self.layer_linear_params()

    def num_params(self) -> int:
        d = self.hidden_size
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return embed + self.linear_params() + self.num_hidden_layers * 2 * d + d

    def flops_per_token(self, seq_len: int, *, training: bool = False, linear_density: float = 1.0) -> float:
        """Matmul FLOPs per token: 2 per multiply-add of every projection (scaled by the density of
        sparse weights), the LM head, and causal attention (QKᵀ and AV averaged over positions).
        Training counts forward + backward = 3x forward."""
        attn = 2 * 2 * self.num_hidden_layers * self.q_dim * (seq_len + 1) / 2
        dense = 2 * (self.linear_params() * linear_density + self.hidden_size * self.vocab_size)
        fwd = dense + attn
        return 3 * fwd if training else fwd


def _rope_from_hf(rope: dict[str, Any] | None) -> RopeScaling:
    if not rope:
        return RopeScaling()
    rope = dict(rope)
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    rope.pop("rope_theta", None)
    known = {f.name for f in dataclasses.fields(RopeScaling)} - {"rope_type"}
    unknown = sorted(set(rope) - known)
    if unknown:
        raise ConfigError(f"unknown rope_scaling key(s): {', '.join(unknown)}")
    return RopeScaling(rope_type=rope_type, **rope)


# ---- presets --------------------------------------------------------------------------------
LLAMA_3_1_8B = LlamaConfig(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 8192),
    tie_word_embeddings=False,
    bos_token_id=128000,
    eos_token_id=128001,
    torch_dtype="bfloat16",
)
# Meta's Llama-3.1-70B config.json: the 8B's vocabulary, RoPE and scaling at 80 layers of 8192 x 28672.
LLAMA_3_1_70B = LLAMA_3_1_8B.replace(
    hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8
)
LLAMA_3_2_1B = LlamaConfig(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192),
    tie_word_embeddings=True,
    bos_token_id=128000,
    eos_token_id=128001,
    torch_dtype="bfloat16",
)
SMOLLM2_135M = LlamaConfig(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    torch_dtype="bfloat16",
)
TINY = LlamaConfig(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)

PRESETS: dict[str, LlamaConfig] = {
    "llama-3.1-8b": LLAMA_3_1_8B,
    "llama-3.1-70b": LLAMA_3_1_70B,
    "llama-3.2-1b": LLAMA_3_2_1B,
    "smollm2-135m": SMOLLM2_135M,
    "tiny": TINY,
}


def preset(name: str) -> LlamaConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
