"""The study's stages in dependency order, each with the spec that determines its output.

A stage's hash covers its kind, its spec (paths relative to STUDY_DIR) and the hashes of the stages
it depends on, so changing anything upstream invalidates exactly the stages downstream of it. A
config file a stage reads (train_config, sheared_config, a parent model YAML) enters the hash as its
resolved values, not its path: editing a value invalidates, moving the file or editing a comment
does not. Two grid cells never share a stage id (a ratio, budget or seed listed twice, or two that
differ below the id's precision, is a ConfigError).
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

from prunejax.config import ConfigError, LlamaConfig, preset
from prunejax.study import baselines
from prunejax.study.config import SPARSE, MethodSpec, StudyConfig


@dataclasses.dataclass(frozen=True)
class Stage:
    id: str
    kind: str  # tokenizer | data | parent | prune | retrain | baseline | scratch | eval (controls: retrain, scratch)
    deps: tuple[str, ...]
    spec: dict[str, Any]
    tokens: int = 0  # tokens this stage processes (training, calibration, Sheared's stage)
    flops: float | None = None  # estimated model FLOPs of the stage (None: shape known only at run time)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


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


def stage_hash(stage: Stage, dep_hashes: dict[str, str]) -> str:
    payload = {"kind": stage.kind, "spec": hashed_spec(stage.spec), "deps": [dep_hashes[d] for d in stage.deps]}
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


def build(study: StudyConfig) -> list[Stage]:
    """Every stage of the study, in an order where each stage follows its dependencies."""
    from prunejax.prune import sheared_config
    from prunejax.train import config as train_config

    stages: list[Stage] = []
    seq = study.eval.seq_len
    resolved = train_config.load(study.train_config, list(study.train_overrides)).to_dict()
    train_spec = {"config": study.train_config, "overrides": list(study.train_overrides), "resolved": resolved}
    sheared_resolved = dataclasses.asdict(sheared_config.load_config(study.sheared_config))
    parent_cfg = parent_config(study)

    def train_flops(cfg: LlamaConfig | None, tokens: int, density: float = 1.0) -> float | None:
        return None if cfg is None else baselines.training_flops_per_token(cfg, seq, density) * tokens

    def add_eval(of: str, cfg: LlamaConfig | None, info: dict[str, Any], density: float = 1.0) -> None:
        tokens = study.eval.max_tokens
        flops = None if cfg is None or not tokens else cfg.flops_per_token(seq, linear_density=density) * tokens
        stages.append(
            Stage(
                f"eval/{of}",
                "eval",
                (of, "data"),
                {"eval": dataclasses.asdict(study.eval)},
                tokens,
                flops,
                {**info, "of": of},
            )
        )

    def add_control(control: str) -> None:
        """The unpruned parent under the same recipe: `continue` retrains it exactly as each pruned model is
        retrained (same R tokens, offset, recipe, seed); `once` trains its architecture from random init on
        [0, P+R] under one schedule, at the largest budget (the equal-total setting)."""
        budgets = study.retrain_budgets if control == "continue" else study.retrain_budgets[-1:]
        parent_tokens = study.parent.tokens
        for seed in study.seeds:
            for budget in budgets:
                tokens = budget if control == "continue" else parent_tokens + budget
                cid = f"control/{control}/s{seed}/R{_fmt_tokens(budget)}"
                spec: dict[str, Any] = {"tokens": tokens, "train": train_spec, "seed": seed}
                spec.update({"offset": parent_tokens + 1} if control == "continue" else {"reinit": False})
                info = {"method": "parent", "role": "control", "setting": control, "seed": seed}
                info.update({"budget": budget, "tokens": tokens})
                kind = "retrain" if control == "continue" else "scratch"
                stages.append(Stage(cid, kind, ("parent", "data"), spec, tokens, train_flops(parent_cfg, tokens), info))
                add_eval(cid, parent_cfg, info)

    data = study.data
    data_deps: tuple[str, ...] = ()
    if data.data_dir is None and data.tokenizer == "train":
        stages.append(
            Stage(
                "tokenizer",
                "tokenizer",
                (),
                {
                    "corpus": data.corpus,
                    "text": list(data.text),
                    "vocab": data.tokenizer_vocab,
                    "max_documents": data.max_documents,
                },
            )
        )
        data_deps = ("tokenizer",)
    stages.append(Stage("data", "data", data_deps, {**dataclasses.asdict(data), "text": list(data.text)}))

    p = study.parent
    if p.import_ is not None:
        stages.append(Stage("parent", "parent", ("data",), {"import": os.path.abspath(p.import_)}))
    else:
        stages.append(
            Stage(
                "parent",
                "parent",
                ("data",),
                {
                    "model": p.model,
                    "model_resolved": parent_cfg.to_hf_dict() if parent_cfg else None,
                    "tokens": p.tokens,
                    "train": train_spec,
                },
                p.tokens,
                train_flops(parent_cfg, p.tokens),
            )
        )
    add_eval("parent", parent_cfg, {"role": "parent", "tokens": p.tokens})

    for control in study.dense_control:
        add_control(control)

    cal = study.calibration
    first_seed = study.seeds[0]
    for method in study.methods:
        for ratio in study.method_ratios(method):
            cell = f"{method.label}/r{ratio:g}"
            shape, density = expected_shape(parent_cfg, method, ratio) if parent_cfg else (None, 1.0)
            info = {"method": method.label, "granularity": method.granularity, "ratio": ratio}
            prune_tokens = study.sheared_prune_tokens if method.name == "sheared" else cal.samples * cal.seq_len
            # pruned once, with the first seed (only Sheared's gates use it): seeds vary what follows the pruning
            prune_id = f"prune/{cell}/s{first_seed}"
            stages.append(
                Stage(
                    prune_id,
                    "prune",
                    ("parent", "data"),
                    {
                        "method": method.name,
                        "pattern": method.pattern,
                        "ratio": ratio,
                        "calibration": dataclasses.asdict(cal),
                        "seed": first_seed,
                        "sheared_tokens": study.sheared_prune_tokens if method.name == "sheared" else 0,
                        "sheared_config": study.sheared_config if method.name == "sheared" else None,
                        "sheared_resolved": sheared_resolved if method.name == "sheared" else None,
                    },
                    prune_tokens,
                    None,
                    {**info, "seed": first_seed, "role": "pruned"},
                )
            )
            add_eval(prune_id, shape, {**info, "seed": first_seed, "role": "oneshot", "tokens": 0}, density)
            for seed in study.seeds:
                tag = f"{cell}/s{seed}"
                seeded = {**info, "seed": seed}
                for budget in study.retrain_budgets:
                    rid = f"retrain/{tag}/R{_fmt_tokens(budget)}"
                    stages.append(
                        Stage(
                            rid,
                            "retrain",
                            (prune_id, "data"),
                            {"tokens": budget, "offset": p.tokens + 1, "train": train_spec, "seed": seed},
                            budget,
                            train_flops(shape, budget, density),
                            {**seeded, "role": "retrained", "tokens": budget},
                        )
                    )
                    add_eval(rid, shape, {**seeded, "role": "retrained", "tokens": budget}, density)
                for kind in study.scratch_shapes:
                    source = prune_id
                    if kind != "same":
                        source = f"baseline/{kind}/{cell}/s{first_seed}"  # a shape: one per pruned model
                        if seed == first_seed:
                            stages.append(
                                Stage(
                                    source,
                                    "baseline",
                                    ("parent", prune_id),
                                    {"match": kind, "seq_len": seq},
                                    info={**info, "seed": first_seed, "shape": kind},
                                )
                            )
                    s_shape, s_density = (shape, density) if kind == "same" else (None, 1.0)
                    for setting in study.scratch_settings:
                        budgets = study.retrain_budgets if setting == "equal_train" else study.retrain_budgets[-1:]
                        for budget in budgets:
                            tokens = baselines.scratch_tokens(
                                setting,
                                parent_tokens=p.tokens,
                                budget=budget,
                                pruning_tokens=prune_tokens,
                                count_pruning_tokens=study.count_pruning_tokens,
                            )
                            sid = f"scratch/{kind}/{tag}/{setting}/R{_fmt_tokens(budget)}"
                            reinit = kind == "same" and method.name in SPARSE
                            scratch_info = {
                                **seeded,
                                "role": "scratch",
                                "shape": kind,
                                "setting": setting,
                                "budget": budget,
                                "tokens": tokens,
                            }
                            stages.append(
                                Stage(
                                    sid,
                                    "scratch",
                                    (source, "data"),
                                    {"tokens": tokens, "reinit": reinit, "train": train_spec, "seed": seed},
                                    tokens,
                                    train_flops(s_shape, tokens, s_density),
                                    scratch_info,
                                )
                            )
                            add_eval(sid, s_shape, scratch_info, s_density)
    check_unique_ids(stages)
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
