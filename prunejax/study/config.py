"""StudyConfig: one YAML names the whole grid (parent, data ranges, methods x ratios, budgets,
scratch baselines, evaluation). Unknown keys are errors at every level; everything is checked
before any work starts."""

from __future__ import annotations

import dataclasses
from typing import Any

from prunejax import storage, yamlconf
from prunejax.config import ConfigError, parse_tokens

SCRATCH_SHAPES = ("same", "params", "flops")
SCRATCH_SETTINGS = ("equal_train", "equal_total")
# The unpruned parent under the retraining recipe: `continue` retrains it on the same R tokens as every
# pruned model (P then R: two schedules); `once` trains its architecture from random init for P+R tokens
# under one schedule (at the largest budget, the equal-total setting). See plan.py.
DENSE_CONTROLS = ("continue", "once")
STRUCTURED = {"minitron-depth": "depth", "shortgpt": "depth", "minitron-width": "width", "sheared": "mixed"}
SPARSE = ("magnitude", "wanda", "sparsegpt")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the study's tokens come from: a built-in corpus, text files, or an existing DATA_DIR."""

    corpus: str | None = None
    text: tuple[str, ...] = ()
    data_dir: str | None = None
    tokenizer: str = "train"  # "train" = train a BPE on the corpus; else a tokenizer/MODEL_DIR/.gguf path
    tokenizer_vocab: int = 1024
    val_fraction: float = 0.02  # fraction of documents held out for validation
    max_documents: int = 0


@dataclasses.dataclass(frozen=True)
class ParentSpec:
    """Pretrain a parent from scratch (`model`: a preset name, YAML/JSON path, or inline fields) for
    `tokens`, or import one (`import`: MODEL_DIR / HF dir / .gguf)."""

    model: Any = None
    tokens: int = 0
    import_: str | None = None


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    pattern: str | None = None
    ratios: tuple[float, ...] | None = None  # None = the study's ratios

    @property
    def label(self) -> str:
        return f"{self.name}-{self.pattern.replace(':', 'of')}" if self.pattern else self.name

    @property
    def granularity(self) -> str:
        if self.name in STRUCTURED:
            return STRUCTURED[self.name]
        return "semi-structured" if self.pattern else "unstructured"


@dataclasses.dataclass(frozen=True)
class CalibrationSpec:
    samples: int = 128
    seq_len: int = 2048
    batch_size: int = 8


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    seq_len: int = 2048
    max_tokens: int = 0  # validation tokens per model (0 = the whole validation split)
    batch_size: int = 8


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    name: str
    data: DataSpec
    parent: ParentSpec
    methods: tuple[MethodSpec, ...]
    ratios: tuple[float, ...]
    retrain_budgets: tuple[int, ...]
    scratch_shapes: tuple[str, ...] = ("same",)
    scratch_settings: tuple[str, ...] = SCRATCH_SETTINGS
    count_pruning_tokens: bool = False  # add calibration / Sheared-stage tokens to equal-total budgets
    seeds: tuple[int, ...] = (0,)  # YAML: a list of seeds, or a count n for seeds 0..n-1
    dense_control: tuple[str, ...] = ()  # any of DENSE_CONTROLS (opt-in: they add stages)
    train_config: str | None = None
    train_overrides: tuple[str, ...] = ()
    calibration: CalibrationSpec = CalibrationSpec()
    sheared_prune_tokens: int = 0
    sheared_config: str | None = None  # configs/prune/sheared*.yaml (default: the original recipe)
    eval: EvalSpec = EvalSpec()
    source: str = ""

    def method_ratios(self, method: MethodSpec) -> tuple[float, ...]:
        return method.ratios if method.ratios is not None else self.ratios


def from_dict(d: dict[str, Any], source: str = "study config") -> StudyConfig:
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    d = dict(d)
    d["data"] = yamlconf.build(DataSpec, d.get("data", {}), f"{source}: data")
    if isinstance(d["data"].text, list | str):
        d["data"] = dataclasses.replace(
            d["data"], text=tuple([d["data"].text] if isinstance(d["data"].text, str) else d["data"].text)
        )
    parent = d.get("parent", {})
    if isinstance(parent, dict):  # `import` is a Python keyword
        parent = {("import_" if k == "import" else k): v for k, v in parent.items()}
    parent = yamlconf.build(ParentSpec, parent, f"{source}: parent")
    d["parent"] = dataclasses.replace(parent, tokens=parse_tokens(parent.tokens))
    methods = []
    for i, m in enumerate(d.get("methods", [])):
        m = {"name": m} if isinstance(m, str) else m
        spec = yamlconf.build(MethodSpec, m, f"{source}: methods[{i}]")
        if spec.ratios is not None:
            spec = dataclasses.replace(spec, ratios=tuple(float(r) for r in spec.ratios))
        methods.append(spec)
    d["methods"] = tuple(methods)
    d["ratios"] = tuple(float(r) for r in d.get("ratios", ()))
    d["retrain_budgets"] = tuple(parse_tokens(b) for b in d.get("retrain_budgets", ()))
    for key in ("scratch_shapes", "scratch_settings", "train_overrides", "dense_control"):
        if key in d:
            d[key] = _names(d[key], key, source)
    if "seeds" in d:
        d["seeds"] = parse_seeds(d["seeds"], source)
    if "sheared_prune_tokens" in d:
        d["sheared_prune_tokens"] = parse_tokens(d["sheared_prune_tokens"])
    d["calibration"] = yamlconf.build(CalibrationSpec, d.get("calibration", {}), f"{source}: calibration")
    d["eval"] = yamlconf.build(EvalSpec, d.get("eval", {}), f"{source}: eval")
    eval_spec = d["eval"]
    d["eval"] = dataclasses.replace(eval_spec, max_tokens=parse_tokens(eval_spec.max_tokens))
    cfg = yamlconf.build(StudyConfig, {**d, "name": d.get("name", "study")}, source, exclude=("source",))
    cfg = dataclasses.replace(cfg, source=source)
    validate(cfg)
    return cfg


def _names(value: Any, key: str, source: str) -> tuple[str, ...]:
    """A list of strings; one string alone stands for a list of one."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{source}: {key} must be a list of strings, got {value!r}")


def parse_seeds(value: Any, source: str) -> tuple[int, ...]:
    """`seeds: 3` means seeds 0, 1, 2; `seeds: [0, 7]` lists them. At least one; a repeat is caught by the plan."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"{source}: seeds: {value} asks for no runs; give a count >= 1 or a list of seeds")
        return tuple(range(value))
    if isinstance(value, list | tuple) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        return tuple(value)
    raise ConfigError(f"{source}: seeds must be a count (e.g. 3) or a non-empty list of integers, got {value!r}")


def validate(cfg: StudyConfig) -> None:
    """Everything checkable without running anything; the runner checks the rest before work starts."""
    from prunejax.prune.registry import METHODS

    where = cfg.source
    data = cfg.data
    if sum(x is not None and x != () for x in (data.corpus, data.text or None, data.data_dir)) != 1:
        raise ConfigError(f"{where}: data needs exactly one of corpus, text, data_dir")
    if data.corpus is not None:
        from prunejax.data.sources import corpus_names
        from prunejax.data.store import DataError

        try:
            corpus_names(data.corpus)
        except DataError as e:
            raise ConfigError(f"{where}: data.corpus: {e}") from None
    if (cfg.parent.import_ is None) == (cfg.parent.model is None):
        raise ConfigError(f"{where}: parent needs exactly one of model (pretrain) or import")
    if cfg.parent.model is not None and cfg.parent.tokens <= 0:
        raise ConfigError(f"{where}: parent.tokens must be positive to pretrain a parent")
    if cfg.parent.import_ is not None and not storage.exists(cfg.parent.import_):
        raise ConfigError(f"{where}: parent path {cfg.parent.import_} does not exist")
    if not cfg.methods:
        raise ConfigError(f"{where}: no methods")
    valid = sorted(set(METHODS) | {"sheared"})
    for m in cfg.methods:
        if m.name not in valid:
            raise ConfigError(f"{where}: unknown method {m.name!r}; valid methods: {', '.join(valid)}")
        if m.pattern and m.name not in SPARSE:
            raise ConfigError(f"{where}: {m.name} takes no N:M pattern")
        for r in cfg.method_ratios(m):
            if not 0 < r < 1:
                raise ConfigError(f"{where}: ratio {r} of {m.label} is outside (0, 1)")
            if m.pattern:
                n, mm = (int(x) for x in m.pattern.split(":"))
                if abs((1 - n / mm) - r) > 1e-9:
                    raise ConfigError(f"{where}: pattern {m.pattern} prunes {1 - n / mm:g}, not ratio {r}")
    labels = [m.label for m in cfg.methods]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: a method appears twice: {labels}")
    if not cfg.retrain_budgets or min(cfg.retrain_budgets) <= 0:
        raise ConfigError(f"{where}: retrain_budgets must be positive token counts")
    for key, allowed in (
        ("scratch_shapes", SCRATCH_SHAPES),
        ("scratch_settings", SCRATCH_SETTINGS),
        ("dense_control", DENSE_CONTROLS),
    ):
        bad = sorted(set(getattr(cfg, key)) - set(allowed))
        if bad:
            raise ConfigError(f"{where}: unknown {key} {bad}; valid: {', '.join(allowed)}")
    if "once" in cfg.dense_control and cfg.parent.model is None:
        raise ConfigError(
            f"{where}: dense_control 'once' retrains the parent's architecture for P+R tokens, so it needs a parent "
            "the study pretrains (parent.model, parent.tokens = P), not an imported one"
        )
    if "sheared" in labels and cfg.sheared_prune_tokens <= 0:
        raise ConfigError(f"{where}: sheared needs sheared_prune_tokens > 0")
    if cfg.sheared_config is not None and not storage.exists(cfg.sheared_config):
        raise ConfigError(f"{where}: sheared_config {cfg.sheared_config} does not exist")
    if cfg.train_config is not None and not storage.exists(cfg.train_config):
        raise ConfigError(f"{where}: train_config {cfg.train_config} does not exist")
    from prunejax.train import config as train_config

    step = train_config.load(cfg.train_config, list(cfg.train_overrides)).tokens_per_step
    small = [b for b in (*cfg.retrain_budgets, *([cfg.parent.tokens] if cfg.parent.model else [])) if b < step]
    if small:
        raise ConfigError(f"{where}: budget(s) {small} are smaller than one training step ({step:,} tokens)")


def load(path: str) -> StudyConfig:
    return from_dict(yamlconf.read(path), source=path)
