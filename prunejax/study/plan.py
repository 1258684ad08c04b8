"""The study's stages in dependency order, each with the spec that determines its output.

A spec is a frozen dataclass per kind (`PruneSpec`, `RetrainSpec`, ...), which `stages.STAGES` hands to
the verb's entry function. A stage's hash covers its kind, its spec (paths relative to STUDY_DIR; read as
`spec_dict`, the dict it has always been hashed as) and the hashes of the stages it depends on, so
changing anything upstream invalidates exactly the stages downstream of it. A config file a stage reads
(train_config, sheared_config, a parent model YAML) enters the hash as its resolved values, not its
path: editing a value invalidates, moving the file or editing a comment does not. A file or directory a
stage reads as data (an imported parent, a given DATA_DIR, text files, a tokenizer path) enters the hash
as a digest of its content (`Stage.reads`, `content_digest`): replacing or editing it in place
invalidates that stage and everything downstream, exactly as an edited config value does. Two grid cells never
share a stage id (a ratio, budget or seed listed twice, or two that differ below the id's precision,
is a ConfigError).
Token ranges of the train split follow the paper: the parent reads [0, P]; every retraining run
reads the disjoint [P+1, P+R+1]; scratch runs read [0, T] (T = R, or P+R at equal total tokens).
Each range holds one token more than its budget: a window of L inputs needs L+1 tokens.
Seeds: each (method, ratio) is pruned once, with the first seed (pruning is deterministic but for
Sheared's gates); every seed then retrains it in its own data order and trains each scratch model
from its own init in its own order. Stage ids say the seed (`s<seed>`).
Dense controls (opt-in, `dense_control`): `control/continue/s<seed>/R<R>` retrains the unpruned parent
exactly as a pruned model is retrained; `control/once/s<seed>/R<R>` trains the parent's architecture
from random init on [0, P+R] under one schedule, for the largest R.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from prunejax import storage
from prunejax.config import ConfigError, LlamaConfig, preset
from prunejax.study import baselines
from prunejax.study.config import SPARSE, CalibrationSpec, DataSpec, EvalSpec, MethodSpec, StudyConfig


@dataclasses.dataclass(frozen=True)
class TrainRecipe:
    """The train config every training stage runs: its path, overrides and resolved values."""

    config: str | None
    overrides: tuple[str, ...]
    resolved: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    corpus: str | None
    text: tuple[str, ...]
    vocab: int
    max_documents: int


@dataclasses.dataclass(frozen=True)
class ImportSpec:
    """A parent converted from a MODEL_DIR, HF dir or .gguf."""

    import_: str  # absolute path


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    """A parent pretrained from random init on [0, P]."""

    model: Any  # a preset name, a model YAML/JSON path or inline config fields
    model_resolved: dict[str, Any] | None
    tokens: int
    train: TrainRecipe


@dataclasses.dataclass(frozen=True)
class PruneSpec:
    method: str
    pattern: str | None
    ratio: float
    calibration: CalibrationSpec
    seed: int
    sheared_tokens: int
    sheared_config: str | None
    sheared_resolved: dict[str, Any] | None
    owl_m: float | None = None  # owl only (None elsewhere, and then not part of the hash: see spec_dict)
    owl_lambda: float | None = None
    owl_map: str | None = None


@dataclasses.dataclass(frozen=True)
class RetrainSpec:
    """Training from a MODEL_DIR on `tokens` tokens from `offset`."""

    tokens: int
    offset: int
    train: TrainRecipe
    seed: int


@dataclasses.dataclass(frozen=True)
class BaselineSpec:
    """A dense shape matching a pruned model's parameters or FLOPs."""

    match: str
    seq_len: int


@dataclasses.dataclass(frozen=True)
class ScratchSpec:
    """Training a shape from random init on [0, tokens]; `reinit` keeps a sparse model's masks."""

    tokens: int
    reinit: bool
    train: TrainRecipe
    seed: int


@dataclasses.dataclass(frozen=True)
class EvaluateSpec:
    eval: EvalSpec


Spec = (
    TokenizerSpec
    | DataSpec
    | ImportSpec
    | PretrainSpec
    | PruneSpec
    | RetrainSpec
    | BaselineSpec
    | ScratchSpec
    | EvaluateSpec
)


@dataclasses.dataclass(frozen=True)
class Stage:
    id: str
    kind: str  # tokenizer | data | parent | prune | retrain | baseline | scratch | eval (controls: retrain, scratch)
    deps: tuple[str, ...]
    spec: Spec
    tokens: int = 0  # tokens this stage processes (training, calibration, Sheared's stage)
    flops: float | None = None  # estimated model FLOPs of the stage (None: shape known only at run time)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    reads: dict[str, str] = dataclasses.field(default_factory=dict)  # a path read as data -> its content digest


def content_digest(path: str) -> str:
    """sha256 of what `path` holds: a file's bytes, or every file under a directory (relative names and bytes,
    in sorted order; names starting with '.' — locks, caches, VCS — are skipped). On object storage, where
    reading everything back would download it, each object's name, size and generation (a new one at every
    write) stand for its bytes."""
    digest = hashlib.sha256()
    if storage.is_remote(path):
        fs = storage.filesystem(path)
        root = path.rstrip("/")
        fs.invalidate_cache(root)  # a listing cached earlier in this process could predate a rewrite
        infos = fs.find(root, detail=True) if fs.isdir(root) else {root: fs.info(root)}
        bare = root.split("://", 1)[-1]
        for name in sorted(infos):
            rel = name.split("://", 1)[-1][len(bare) :].lstrip("/")
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            info = infos[name]
            stamp = info.get("generation") or info.get("md5Hash") or info.get("crc32c") or info.get("updated")
            digest.update(json.dumps([rel, info.get("size"), str(stamp)]).encode() + b"\n")
        return digest.hexdigest()[:16]
    if not os.path.exists(path):
        raise ConfigError(f"{path}: does not exist (the study reads it)")
    if os.path.isfile(path):
        files = [("", path)]
    else:
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [(os.path.relpath(os.path.join(root, n), path), os.path.join(root, n)) for n in names]
        files = sorted(f for f in files if not os.path.basename(f[0]).startswith("."))
    for rel, file in files:
        digest.update(rel.encode() + b"\0")
        with open(file, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


def _reads(*paths: str | None) -> dict[str, str]:
    """The content digests of the local or remote paths among `paths` (a hub name or "train" is not a path)."""
    return {p: content_digest(p) for p in paths if p and (storage.is_remote(p) or os.path.exists(p))}


def _fmt_tokens(n: int) -> str:
    for unit, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return str(n)


# A path the runner needs -> the key holding what was read from it; the hash takes the content, not the path.
CONTENT_KEYS = {"config": "resolved", "sheared_config": "sheared_resolved", "model": "model_resolved"}


def hashed_spec(spec: Any) -> Any:
    """`spec` without the paths whose resolved contents it also holds (recursively)."""
    if not isinstance(spec, dict):
        return spec
    return {k: hashed_spec(v) for k, v in spec.items() if not (k in CONTENT_KEYS and CONTENT_KEYS[k] in spec)}


def spec_dict(spec: Spec) -> dict[str, Any]:
    """The spec as the dict its hash is computed from (tuples hash as the lists they were; `import` is a keyword).
    Keys added after studies were run (`LATER_KEYS`) count only when set, so earlier stages keep their hashes."""
    return {
        ("import" if k == "import_" else k): v
        for k, v in dataclasses.asdict(spec).items()
        if not (k in LATER_KEYS and v is None)
    }


LATER_KEYS = ("owl_m", "owl_lambda", "owl_map")


def stage_hash(stage: Stage, dep_hashes: dict[str, str]) -> str:
    spec = hashed_spec(spec_dict(stage.spec))
    payload = {"kind": stage.kind, "spec": spec, "deps": [dep_hashes[d] for d in stage.deps]}
    if stage.reads:  # only where a stage reads paths as data: every other stage keeps the hash it had
        payload["reads"] = stage.reads
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def hashes(stages: list[Stage]) -> dict[str, str]:
    out: dict[str, str] = {}
    for s in stages:  # stages are in dependency order
        out[s.id] = stage_hash(s, out)
    return out


def parent_config(study: StudyConfig) -> LlamaConfig | None:
    """The parent's architecture when it can be known before running (vocab from the tokenizer)."""
    model = study.parent.model
    if study.parent.import_ is not None:
        from prunejax.hf import load_config

        src = study.parent.import_
        if src.endswith(".gguf"):
            from prunejax.gguf_import import _reader, config_from_gguf

            return config_from_gguf(_reader(src), src)  # metadata only; tensors are not read
        return load_config(src)
    if isinstance(model, str) and not os.path.exists(model):
        cfg = preset(model)
    elif isinstance(model, str):
        cfg = LlamaConfig.from_file(model)
    else:
        cfg = LlamaConfig.from_hf_dict({"vocab_size": study.data.tokenizer_vocab, **model})
    if study.data.tokenizer == "train":
        cfg = cfg.replace(vocab_size=study.data.tokenizer_vocab)
    return cfg


def expected_shape(parent: LlamaConfig, method: MethodSpec, ratio: float) -> tuple[LlamaConfig, float]:
    """(config, density) a method should produce; used for the dry-run's FLOP estimates."""
    if method.name in SPARSE:
        return parent, 1.0 - ratio
    from prunejax.prune import shapes

    family = "depth" if method.granularity == "depth" else "width"  # sheared's exact target: the width rule
    try:
        target, _ = shapes.resolve_target(parent, method.name, family, ratio, None)
    except ValueError as e:
        raise ConfigError(f"{method.label} cannot reach ratio {ratio:g} on this parent: {e}") from None
    return shapes.apply_target(parent, target), 1.0


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What every part of the plan reads besides the study: the configs it names, resolved."""

    study: StudyConfig
    train: TrainRecipe
    sheared_resolved: dict[str, Any]
    parent: LlamaConfig | None  # None: the parent's shape is known only after it is imported

    def train_flops(self, cfg: LlamaConfig | None, tokens: int, density: float = 1.0) -> float | None:
        seq = self.study.eval.seq_len
        return None if cfg is None else baselines.training_flops_per_token(cfg, seq, density) * tokens


@dataclasses.dataclass(frozen=True)
class _Cell:
    """One (method, ratio) of the grid and the shape its pruning is expected to reach."""

    method: MethodSpec
    ratio: float
    name: str  # <label>/r<ratio>
    shape: LlamaConfig | None
    density: float
    prune_id: str
    prune_tokens: int
    info: dict[str, Any]


def build(study: StudyConfig) -> list[Stage]:
    """Every stage of the study, in an order where each stage follows its dependencies."""
    inputs = _resolve(study)
    stages = [*data_stages(study), *parent_stages(inputs)]
    for control in study.dense_control:
        stages += control_stages(inputs, control)
    for method in study.methods:
        for ratio in study.method_ratios(method):
            stages += cell_stages(inputs, _cell(inputs, method, ratio))
    check_unique_ids(stages)
    return stages


def _resolve(study: StudyConfig) -> _Inputs:
    from prunejax.prune import sheared_config
    from prunejax.train import config as train_config

    resolved = train_config.load(study.train_config, list(study.train_overrides)).to_dict()
    recipe = TrainRecipe(study.train_config, tuple(study.train_overrides), resolved)
    sheared_resolved = dataclasses.asdict(sheared_config.load_config(study.sheared_config))
    return _Inputs(study, recipe, sheared_resolved, parent_config(study))


def _cell(inputs: _Inputs, method: MethodSpec, ratio: float) -> _Cell:
    study = inputs.study
    shape, density = expected_shape(inputs.parent, method, ratio) if inputs.parent else (None, 1.0)
    cal = study.calibration
    prune_tokens = study.sheared_prune_tokens if method.name == "sheared" else cal.samples * cal.seq_len
    name = f"{method.label}/r{ratio:g}"
    info = {"method": method.label, "granularity": method.granularity, "ratio": ratio}
    # pruned once, with the first seed (only Sheared's gates use it): seeds vary what follows the pruning
    prune_id = f"prune/{name}/s{study.seeds[0]}"
    return _Cell(method, ratio, name, shape, density, prune_id, prune_tokens, info)


def eval_stage(inputs: _Inputs, of: str, cfg: LlamaConfig | None, info: dict[str, Any], density: float = 1.0) -> Stage:
    """The evaluation of stage `of`'s model (FLOPs estimated when its shape `cfg` is known)."""
    e = inputs.study.eval
    tokens = e.max_tokens
    flops = None if cfg is None or not tokens else cfg.flops_per_token(e.seq_len, linear_density=density) * tokens
    return Stage(f"eval/{of}", "eval", (of, "data"), EvaluateSpec(e), tokens, flops, {**info, "of": of})


def data_stages(study: StudyConfig) -> list[Stage]:
    """The DATA_DIR, after the tokenizer it is tokenized with when the study trains one."""
    data = study.data
    reads = _reads(data.data_dir, *data.text, None if data.tokenizer == "train" else data.tokenizer)
    if data.data_dir is not None or data.tokenizer != "train":
        return [Stage("data", "data", (), data, reads=reads)]
    tokenizer = TokenizerSpec(data.corpus, data.text, data.tokenizer_vocab, data.max_documents)
    return [
        Stage("tokenizer", "tokenizer", (), tokenizer, reads=_reads(*data.text)),
        Stage("data", "data", ("tokenizer",), data, reads=reads),
    ]


def parent_stages(inputs: _Inputs) -> list[Stage]:
    """The parent, imported or pretrained on [0, P], and its evaluation."""
    p, cfg = inputs.study.parent, inputs.parent
    if p.import_ is not None:
        source = storage.absolute(p.import_)
        parent = Stage("parent", "parent", ("data",), ImportSpec(source), reads=_reads(source))
    else:
        spec = PretrainSpec(p.model, cfg.to_hf_dict() if cfg else None, p.tokens, inputs.train)
        parent = Stage("parent", "parent", ("data",), spec, p.tokens, inputs.train_flops(cfg, p.tokens))
    return [parent, eval_stage(inputs, "parent", cfg, {"role": "parent", "tokens": p.tokens})]


def control_stages(inputs: _Inputs, control: str) -> list[Stage]:
    """The unpruned parent under the same recipe: `continue` retrains it exactly as each pruned model is
    retrained (same R tokens, offset, recipe, seed); `once` trains its architecture from random init on
    [0, P+R] under one schedule, at the largest budget (the equal-total setting)."""
    study = inputs.study
    budgets = study.retrain_budgets if control == "continue" else study.retrain_budgets[-1:]
    parent_tokens = study.parent.tokens
    stages = []
    for seed in study.seeds:
        for budget in budgets:
            cid = f"control/{control}/s{seed}/R{_fmt_tokens(budget)}"
            spec: RetrainSpec | ScratchSpec
            if control == "continue":
                kind, tokens = "retrain", budget
                spec = RetrainSpec(tokens, parent_tokens + 1, inputs.train, seed)
            else:
                kind, tokens = "scratch", parent_tokens + budget
                spec = ScratchSpec(tokens, False, inputs.train, seed)
            info = {"method": "parent", "role": "control", "setting": control, "seed": seed}
            info.update({"budget": budget, "tokens": tokens})
            flops = inputs.train_flops(inputs.parent, tokens)
            stages += [Stage(cid, kind, ("parent", "data"), spec, tokens, flops, info)]
            stages += [eval_stage(inputs, cid, inputs.parent, info)]
    return stages


def cell_stages(inputs: _Inputs, cell: _Cell) -> list[Stage]:
    """One (method, ratio): its pruning, evaluated one-shot, then per seed its retraining and scratch runs."""
    study = inputs.study
    first_seed = study.seeds[0]
    name = cell.method.name
    spec = PruneSpec(
        name,
        cell.method.pattern,
        cell.ratio,
        study.calibration,
        first_seed,
        study.sheared_prune_tokens if name == "sheared" else 0,
        study.sheared_config if name == "sheared" else None,
        inputs.sheared_resolved if name == "sheared" else None,
        **cell.method.owl_settings,
    )
    info = {**cell.info, "seed": first_seed, "role": "pruned"}
    stages = [Stage(cell.prune_id, "prune", ("parent", "data"), spec, cell.prune_tokens, None, info)]
    oneshot = {**cell.info, "seed": first_seed, "role": "oneshot", "tokens": 0}
    stages += [eval_stage(inputs, cell.prune_id, cell.shape, oneshot, cell.density)]
    for seed in study.seeds:
        stages += retrain_stages(inputs, cell, seed)
        for shape in study.scratch_shapes:
            stages += scratch_stages(inputs, cell, shape, seed)
    return stages


def retrain_stages(inputs: _Inputs, cell: _Cell, seed: int) -> list[Stage]:
    """The pruned model retrained on [P+1, P+R+1] for each budget R."""
    stages = []
    for budget in inputs.study.retrain_budgets:
        rid = f"retrain/{cell.name}/s{seed}/R{_fmt_tokens(budget)}"
        spec = RetrainSpec(budget, inputs.study.parent.tokens + 1, inputs.train, seed)
        info = {**cell.info, "seed": seed, "role": "retrained", "tokens": budget}
        flops = inputs.train_flops(cell.shape, budget, cell.density)
        stages += [Stage(rid, "retrain", (cell.prune_id, "data"), spec, budget, flops, info)]
        stages += [eval_stage(inputs, rid, cell.shape, info, cell.density)]
    return stages


def scratch_stages(inputs: _Inputs, cell: _Cell, shape: str, seed: int) -> list[Stage]:
    """Random-init runs of the pruned model's shape (`same`) or of a dense shape matching its parameters or
    FLOPs (a `baseline` stage, one per pruned model), for each budget setting."""
    study = inputs.study
    first_seed = study.seeds[0]
    stages = []
    source = cell.prune_id
    if shape != "same":
        source = f"baseline/{shape}/{cell.name}/s{first_seed}"  # a shape: one per pruned model
        if seed == first_seed:
            info = {**cell.info, "seed": first_seed, "shape": shape}
            stages += [
                Stage(source, "baseline", ("parent", cell.prune_id), BaselineSpec(shape, study.eval.seq_len), info=info)
            ]
    cfg, density = (cell.shape, cell.density) if shape == "same" else (None, 1.0)
    reinit = shape == "same" and cell.method.name in SPARSE
    for setting in study.scratch_settings:
        for budget in study.retrain_budgets if setting == "equal_train" else study.retrain_budgets[-1:]:
            tokens = baselines.scratch_tokens(
                setting,
                parent_tokens=study.parent.tokens,
                budget=budget,
                pruning_tokens=cell.prune_tokens,
                count_pruning_tokens=study.count_pruning_tokens,
            )
            sid = f"scratch/{shape}/{cell.name}/s{seed}/{setting}/R{_fmt_tokens(budget)}"
            info = {**cell.info, "seed": seed, "role": "scratch", "shape": shape, "setting": setting}
            info.update({"budget": budget, "tokens": tokens})
            spec = ScratchSpec(tokens, reinit, inputs.train, seed)
            flops = inputs.train_flops(cfg, tokens, density)
            stages += [Stage(sid, "scratch", (source, "data"), spec, tokens, flops, info)]
            stages += [eval_stage(inputs, sid, cfg, info, density)]
    return stages


def check_unique_ids(stages: list[Stage]) -> None:
    """Each grid cell is its own stage: two cells with one id would share (and overwrite) one output."""
    seen: set[str] = set()
    for s in stages:
        if s.id in seen:
            raise ConfigError(
                f"two grid cells map to stage {s.id}: a ratio, retrain budget or seed is listed twice, or two "
                "differ below the id's precision (ratios 6 significant digits, budgets 4); list each once"
            )
        seen.add(s.id)


def describe(stages: list[Stage]) -> str:
    """The dry-run table: each stage with its tokens and FLOPs, then the totals."""
    lines = [f"{'stage':58s} {'kind':9s} {'tokens':>10s} {'FLOPs':>10s}"]
    total_tokens, total_flops, unknown = 0, 0.0, 0
    for s in stages:
        flops = (
            "?"
            if s.flops is None and s.kind in ("parent", "retrain", "scratch")
            else (f"{s.flops:.2e}" if s.flops else "-")
        )
        unknown += flops == "?"
        lines.append(f"{s.id:58s} {s.kind:9s} {_fmt_tokens(s.tokens) if s.tokens else '-':>10s} {flops:>10s}")
        if s.kind in ("parent", "retrain", "scratch"):
            total_tokens += s.tokens
        total_flops += s.flops or 0.0
    lines.append(
        f"{len(stages)} stages; training tokens {total_tokens:,}; estimated FLOPs {total_flops:.3e}"
        + (f" (+{unknown} stages whose shape is known only after pruning)" if unknown else "")
    )
    return "\n".join(lines)
