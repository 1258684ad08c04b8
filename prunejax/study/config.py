"""StudyConfig: one YAML names the whole grid (parent, data ranges, methods x ratios, budgets,
scratch baselines, evaluation). Unknown keys are errors at every level; everything is checked
before any work starts."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import pydantic

from prunejax import storage, yamlconf
from prunejax.config import ConfigError
from prunejax.yamlconf import STRICT, Tokens

SCRATCH_SHAPES = ("same", "params", "flops")
SCRATCH_SETTINGS = ("equal_train", "equal_total")
# The unpruned parent under the retraining recipe: `continue` retrains it on the same R tokens as every
# pruned model (P then R: two schedules); `once` trains its architecture from random init for P+R tokens
# under one schedule (at the largest budget, the equal-total setting). See plan.py.
DENSE_CONTROLS = ("continue", "once")
STRUCTURED = {"minitron-depth": "depth", "shortgpt": "depth", "minitron-width": "width", "sheared": "mixed"}
SPARSE = ("magnitude", "wanda", "sparsegpt", "owl")

Count = Annotated[int, pydantic.Field(ge=1)]
Seed = Annotated[int, pydantic.Field(ge=0, lt=2**31)]


def _seeds(value: Any) -> Any:
    """`seeds: 3` means seeds 0, 1, 2; a list names them. At least one; a repeat is caught by the plan."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"{value} asks for no runs; give a count >= 1 or a list of seeds")
        return tuple(range(value))
    if not isinstance(value, list) or not value:
        raise ConfigError(f"must be a count (e.g. 3) or a non-empty list of integers, got {value!r}")
    return tuple(value)  # after a validator, strict mode wants the tuple itself


def _names(value: Any) -> Any:
    """One string alone stands for a list of one."""
    return (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else value


Names = Annotated[tuple[str, ...], pydantic.BeforeValidator(_names)]


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the study's tokens come from: a built-in corpus, text files, or an existing DATA_DIR."""

    __pydantic_config__ = STRICT

    corpus: str | None = None
    text: Names = ()
    data_dir: str | None = None
    tokenizer: str = "train"  # "train" = train a BPE on the corpus; else a tokenizer/MODEL_DIR/.gguf path
    tokenizer_vocab: Count = 1024
    val_fraction: Annotated[float, pydantic.Field(gt=0, lt=1)] = 0.02  # fraction of documents held out
    max_documents: Annotated[int, pydantic.Field(ge=0)] = 0


@dataclasses.dataclass(frozen=True)
class ParentSpec:
    """Pretrain a parent from scratch (`model`: a preset name, YAML/JSON path, or inline fields) for
    `tokens`, or import one (`import`: MODEL_DIR / HF dir / .gguf)."""

    __pydantic_config__ = STRICT

    model: Any = None
    tokens: Tokens = 0
    import_: str | None = None


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    __pydantic_config__ = STRICT

    name: str
    pattern: str | None = None
    ratios: tuple[float, ...] | None = None  # None = the study's ratios
    owl_m: float | None = None  # owl only: outlier threshold M and largest deviation lambda (None: its defaults)
    owl_lambda: float | None = None
    owl_map: str | None = None  # owl only: bounded (its default) or range (the OWL authors' map)

    @property
    def label(self) -> str:
        if self.pattern:
            return f"{self.name}-{self.pattern.replace(':', 'of')}"
        label = self.name
        if self.owl_m is not None or self.owl_lambda is not None:  # two OWL settings in one study differ by name
            label += f"-M{self.owl_settings['owl_m']:g}-L{self.owl_settings['owl_lambda']:g}"
        return label + (f"-{self.owl_map}" if self.owl_map is not None else "")

    @property
    def owl_settings(self) -> dict[str, Any]:
        """OWL's M and lambda with its defaults filled in, and its map when given (what a stage's hash records:
        a study that leaves the map out keeps the hashes it had before the map was an option); {} for other
        methods."""
        if self.name != "owl":
            return {}
        from prunejax.prune import owl

        return {
            "owl_m": owl.DEFAULT_M if self.owl_m is None else self.owl_m,
            "owl_lambda": owl.DEFAULT_LAMBDA if self.owl_lambda is None else self.owl_lambda,
            **({"owl_map": self.owl_map} if self.owl_map is not None else {}),
        }

    @property
    def granularity(self) -> str:
        if self.name in STRUCTURED:
            return STRUCTURED[self.name]
        return "semi-structured" if self.pattern else "unstructured"


@dataclasses.dataclass(frozen=True)
class CalibrationSpec:
    __pydantic_config__ = STRICT

    samples: Count = 128
    seq_len: Count = 2048
    batch_size: Count = 8


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    __pydantic_config__ = STRICT

    seq_len: Count = 2048
    max_tokens: Tokens = 0  # validation tokens per model (0 = the whole validation split)
    batch_size: Count = 8


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    __pydantic_config__ = STRICT

    name: str
    data: DataSpec
    parent: ParentSpec
    methods: tuple[MethodSpec, ...]
    ratios: tuple[float, ...]
    retrain_budgets: tuple[Tokens, ...]
    scratch_shapes: Names = ("same",)
    scratch_settings: Names = SCRATCH_SETTINGS
    count_pruning_tokens: bool = False  # add calibration / Sheared-stage tokens to equal-total budgets
    seeds: Annotated[tuple[Seed, ...], pydantic.BeforeValidator(_seeds)] = (0,)  # YAML: a list, or a count n: 0..n-1
    dense_control: Names = ()  # any of DENSE_CONTROLS (opt-in: they add stages)
    train_config: str | None = None
    train_overrides: Names = ()
    calibration: CalibrationSpec = CalibrationSpec()
    sheared_prune_tokens: Tokens = 0
    sheared_config: str | None = None  # configs/prune/sheared*.yaml (default: the original recipe)
    eval: EvalSpec = EvalSpec()
    source: str = ""

    def method_ratios(self, method: MethodSpec) -> tuple[float, ...]:
        return method.ratios if method.ratios is not None else self.ratios


def from_dict(d: Any, source: str = "study config") -> StudyConfig:
    """The study in mapping `d` (a parsed YAML file), checked against the schema above, then `validate`d."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    d = {"name": "study", **d}
    if isinstance(d.get("parent"), dict):  # `import` is a Python keyword
        d["parent"] = {("import_" if k == "import" else k): v for k, v in d["parent"].items()}
    if isinstance(d.get("methods"), list):
        d["methods"] = [{"name": m} if isinstance(m, str) else m for m in d["methods"]]
    for key in ("data", "parent", "calibration", "eval"):
        d.setdefault(key, {})
    for key in ("methods", "ratios"):
        d.setdefault(key, [])  # validate() says what an empty grid lacks
    cfg = yamlconf.build(StudyConfig, d, source, exclude=("source",))
    cfg = dataclasses.replace(cfg, source=source)
    validate(cfg)
    return cfg


def validate(cfg: StudyConfig) -> None:
    """Everything checkable without running anything; the runner checks the rest before work starts."""
    from prunejax.prune.masks import PruneError, parse_pattern
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
    for i, m in enumerate(cfg.methods):
        key = f"{where}: methods[{i}]"
        if m.name not in valid:
            raise ConfigError(f"{key}.name: unknown method {m.name!r}; valid methods: {', '.join(valid)}")
        if m.pattern and m.name not in SPARSE:
            raise ConfigError(f"{key}.pattern: {m.name} takes no N:M pattern")
        if m.name != "owl" and (m.owl_m is not None or m.owl_lambda is not None or m.owl_map is not None):
            raise ConfigError(f"{key}: owl_m, owl_lambda and owl_map apply to owl only, not {m.name}")
        try:
            pattern = parse_pattern(m.pattern)
        except PruneError as e:
            raise ConfigError(f"{key}.pattern: {e}") from None
        for r in cfg.method_ratios(m):
            if not 0 < r < 1:
                raise ConfigError(f"{where}: ratio {r} of {m.label} is outside (0, 1)")
            if m.name == "owl":
                from prunejax.prune import owl

                try:
                    owl.check_owl(r, pattern, **m.owl_settings)
                except PruneError as e:
                    raise ConfigError(f"{key}: {e}") from None
            if pattern and abs((1 - pattern[0] / pattern[1]) - r) > 1e-9:
                raise ConfigError(f"{key}.pattern: {m.pattern} prunes {1 - pattern[0] / pattern[1]:g}, not ratio {r}")
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
