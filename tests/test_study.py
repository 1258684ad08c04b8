"""The study: baselines, plan, runner (end to end, interrupted, changed config) and report."""

import csv
import dataclasses
import glob
import json
import os
import re
import types

import jax
import pytest
import yaml

from prunejax.config import LLAMA_3_1_8B, TINY, ConfigError
from prunejax.model import init_params
from prunejax.prune import run as prune_run
from prunejax.study import baselines, plan, report
from prunejax.study import config as study_config
from prunejax.study.runner import Runner, StudyError
from prunejax.study.stages import STAGES


def _count(cfg) -> int:
    return sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))))


# ---- baselines -------------------------------------------------------------------------------
@pytest.mark.parametrize("parent", [TINY, LLAMA_3_1_8B], ids=["tiny", "8b"])
def test_matched_params_baseline(parent):
    density = 0.5  # a 50% sparse model of the parent's shape
    m = baselines.matched_config(parent, parent, density=density, quantity="params")
    target = parent.num_params() - 0.5 * parent.linear_params()
    assert m.target == target
    assert _count(m.cfg) == m.achieved  # counted from real shapes
    assert abs(m.rel_error) < 0.05
    assert m.cfg.num_hidden_layers == parent.num_hidden_layers and m.cfg.head_dim == parent.head_dim
    # the neighbours on the grid (hidden +- one step, FFN at the parent's ratio) are no closer
    step = max(8, parent.hidden_size // 64)
    aspect = parent.intermediate_size / parent.hidden_size
    for h in (m.cfg.hidden_size - step, m.cfg.hidden_size + step):
        if step <= h <= parent.hidden_size:
            ffn = max(step, round(h * aspect / step) * step)
            other = parent.replace(hidden_size=h, intermediate_size=ffn).num_params()
            assert abs(other - target) >= abs(m.achieved - target)


def test_matched_flops_baseline_uses_actual_shapes_and_sparsity():
    parent = LLAMA_3_1_8B
    pruned = parent.replace(num_hidden_layers=16)
    m = baselines.matched_config(parent, pruned, quantity="flops", seq_len=8192)
    assert m.target == pruned.flops_per_token(8192, training=True)
    assert m.cfg.hidden_size == parent.hidden_size  # a depth-pruned model is already dense: itself
    sparse = baselines.matched_config(parent, parent, density=0.5, quantity="flops", seq_len=8192)
    assert sparse.target == parent.flops_per_token(8192, training=True, linear_density=0.5)
    assert sparse.cfg.hidden_size < parent.hidden_size and abs(sparse.rel_error) < 0.05


def test_budget_settings():
    assert baselines.scratch_tokens("equal_train", parent_tokens=200, budget=50) == 50
    assert baselines.scratch_tokens("equal_total", parent_tokens=200, budget=50) == 250
    assert (
        baselines.scratch_tokens(
            "equal_total", parent_tokens=200, budget=50, pruning_tokens=4, count_pruning_tokens=True
        )
        == 254
    )


# ---- config and plan ---------------------------------------------------------------------------
MINI = {
    "name": "mini",
    "data": {"corpus": "kjv", "tokenizer": "train", "tokenizer_vocab": 300, "val_fraction": 0.1, "max_documents": 80},
    "parent": {
        "model": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 128,
        },
        "tokens": "6k",
    },
    "methods": ["minitron-depth", "wanda", "shortgpt"],  # both depth methods keep 1 of 2 layers
    "ratios": [0.5],
    "retrain_budgets": ["2k", "4k"],
    "scratch_shapes": ["same", "params"],
    "scratch_settings": ["equal_train", "equal_total"],
    "train_config": "configs/train/tiny.yaml",
    "train_overrides": ["seq_len=64", "global_batch=8", "val_every=0", "ckpt_every=0", "val_batches=1", "log_every=5"],
    "calibration": {"samples": 4, "seq_len": 64, "batch_size": 4},
    "eval": {"seq_len": 64, "max_tokens": "2k", "batch_size": 8},
}


def test_every_config_loads_and_dry_runs(capsys):
    paths = sorted(glob.glob("configs/study/*.yaml"))
    assert paths
    for path in paths:
        study = study_config.load(path)
        stages = plan.build(study)
        assert plan.describe(stages).splitlines()[-1].startswith(f"{len(stages)} stages")


def test_owl_cells_carry_their_settings_into_the_prune_stage_and_its_hash(monkeypatch):
    def prune_stages(*methods):
        stages = plan.build(study_config.from_dict({**MINI, "methods": list(methods)}))
        return {s.id: s for s in stages if s.kind == "prune"}, plan.hashes(stages)

    stages, hashes = prune_stages("wanda", "owl")
    owl, wanda = stages["prune/owl/r0.5/s0"].spec, stages["prune/wanda/r0.5/s0"].spec
    assert (owl.owl_m, owl.owl_lambda) == (5.0, 0.08)  # the defaults, written out: a change of them is a new stage
    assert "owl_m" not in plan.spec_dict(wanda) and "owl_lambda" not in plan.spec_dict(wanda)  # earlier hashes kept
    tuned, tuned_hashes = prune_stages("wanda", {"name": "owl", "owl_lambda": 0.05})
    assert tuned["prune/owl-M5-L0.05/r0.5/s0"].spec.owl_lambda == 0.05
    assert tuned_hashes["prune/owl-M5-L0.05/r0.5/s0"] != hashes["prune/owl/r0.5/s0"]
    assert tuned_hashes["prune/wanda/r0.5/s0"] == hashes["prune/wanda/r0.5/s0"]
    calls = []
    monkeypatch.setattr(prune_run, "prune_model", lambda *a, **kw: calls.append((a, kw)))
    paths = types.SimpleNamespace(out=lambda stage_id: f"/study/{stage_id}", model_dir=lambda stage_id: "/study/parent")
    STAGES["prune"](paths, tuned["prune/owl-M5-L0.05/r0.5/s0"])
    assert calls[0][0] == ("/study/parent", "owl") and (calls[0][1]["owl_m"], calls[0][1]["owl_lambda"]) == (5.0, 0.05)
    STAGES["prune"](paths, tuned["prune/wanda/r0.5/s0"])
    assert "owl_m" not in calls[1][1]
    # the map: absent from the hash unless given (studies run before it was an option keep their stages)
    assert "owl_map" not in plan.spec_dict(owl) and calls[0][1]["owl_map"] is None
    ranged, ranged_hashes = prune_stages("wanda", {"name": "owl", "owl_map": "range"})
    assert ranged["prune/owl-range/r0.5/s0"].spec.owl_map == "range"
    assert ranged_hashes["prune/owl-range/r0.5/s0"] != hashes["prune/owl/r0.5/s0"]
    STAGES["prune"](paths, ranged["prune/owl-range/r0.5/s0"])
    assert calls[2][1]["owl_map"] == "range" and calls[2][1]["owl_lambda"] == 0.08
    for bad, message in (
        ({"name": "wanda", "owl_m": 3}, "methods[0]: owl_m, owl_lambda and owl_map apply to owl only, not wanda"),
        ({"name": "wanda", "owl_map": "range"}, "methods[0]: owl_m, owl_lambda and owl_map apply to owl only"),
        ({"name": "owl", "owl_map": "paper"}, "methods[0]: --owl-map must be one of bounded, range, got 'paper'"),
        ({"name": "owl", "owl_lambda": 0.6}, "methods[0]: "),
        ({"name": "owl", "pattern": "2:4"}, "methods[0]: "),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            study_config.from_dict({**MINI, "methods": [bad]})


def test_plan_ranges_and_hashes():
    study = study_config.from_dict(MINI)
    stages = {s.id: s for s in plan.build(study)}
    assert stages["retrain/wanda/r0.5/s0/R2k"].spec.offset == 6001  # disjoint from the parent's [0, 6000]
    assert stages["scratch/same/wanda/r0.5/s0/equal_total/R4k"].tokens == 10_000
    assert stages["scratch/same/wanda/r0.5/s0/equal_train/R4k"].spec.reinit  # the sparse control
    assert not stages["scratch/same/minitron-depth/r0.5/s0/equal_train/R4k"].spec.reinit
    h1 = plan.hashes(list(stages.values()))
    changed = study_config.from_dict({**MINI, "retrain_budgets": ["2k", "5k"]})
    h2 = plan.hashes(plan.build(changed))
    assert h1["prune/wanda/r0.5/s0"] == h2["prune/wanda/r0.5/s0"]
    assert h1["retrain/wanda/r0.5/s0/R2k"] == h2["retrain/wanda/r0.5/s0/R2k"]
    assert h1["scratch/same/wanda/r0.5/s0/equal_train/R2k"] == h2["scratch/same/wanda/r0.5/s0/equal_train/R2k"]


def test_stage_keys_cover_config_contents_not_paths(tmp_path):
    train = tmp_path / "train.yaml"
    train.write_text(open("configs/train/tiny.yaml").read())
    study = {**MINI, "methods": ["wanda", "sheared"], "sheared_prune_tokens": "4k"}
    sheared = tmp_path / "sheared.yaml"
    sheared.write_text(open("configs/prune/sheared_tiny.yaml").read())

    def keys(**change):
        return plan.hashes(plan.build(study_config.from_dict({**study, **change})))

    base = keys(train_config=str(train), sheared_config=str(sheared))
    moved = tmp_path / "moved.yaml"
    moved.write_text(train.read_text() + "\n# a comment changes no value\n")
    assert keys(train_config=str(moved), sheared_config=str(sheared)) == base
    train.write_text(train.read_text().replace("peak_lr: 3.0e-3", "peak_lr: 1.0e-2"))
    edited = keys(train_config=str(train), sheared_config=str(sheared))
    for sid in ("parent", "retrain/wanda/r0.5/s0/R2k", "scratch/params/wanda/r0.5/s0/equal_total/R4k"):
        assert edited[sid] != base[sid], sid  # an edited train config is never reported cached
    assert edited["data"] == base["data"]
    sheared.write_text(sheared.read_text() + "\nlr: 0.5\n")
    changed = keys(train_config=str(moved), sheared_config=str(sheared))
    assert changed["prune/sheared/r0.5/s0"] != base["prune/sheared/r0.5/s0"]
    assert changed["prune/wanda/r0.5/s0"] == base["prune/wanda/r0.5/s0"]
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump({"vocab_size": 300, **MINI["parent"]["model"]}))
    inline = keys(train_config=str(moved), sheared_config=str(sheared))
    from_file = keys(
        train_config=str(moved), sheared_config=str(sheared), parent={**MINI["parent"], "model": str(model)}
    )
    assert from_file["parent"] == inline["parent"]  # the same architecture, however it is written
    model.write_text(yaml.safe_dump({"vocab_size": 300, **MINI["parent"]["model"], "intermediate_size": 96}))
    wider = keys(train_config=str(moved), sheared_config=str(sheared), parent={**MINI["parent"], "model": str(model)})
    assert wider["parent"] != inline["parent"]


def test_seeds_vary_what_follows_the_pruning():
    default = plan.build(study_config.from_dict(MINI))
    for same in ({"seeds": 1}, {"seeds": [0]}):  # the default is one seed, 0: the same plan, stage for stage
        stages = plan.build(study_config.from_dict({**MINI, **same}))
        assert [(s.id, s.spec, s.deps) for s in stages] == [(s.id, s.spec, s.deps) for s in default]
    study = study_config.from_dict({**MINI, "seeds": 3})
    assert study.seeds == (0, 1, 2)
    stages = {s.id: s for s in plan.build(study)}
    assert [sid for sid in stages if sid.startswith("prune/wanda/")] == ["prune/wanda/r0.5/s0"]  # pruned once
    assert [sid for sid in stages if sid.startswith("baseline/params/wanda/")] == ["baseline/params/wanda/r0.5/s0"]
    for seed in (0, 1, 2):
        retrain = stages[f"retrain/wanda/r0.5/s{seed}/R2k"]
        assert retrain.deps == ("prune/wanda/r0.5/s0", "data") and retrain.spec.seed == seed
        for shape, source in (("same", "prune/wanda/r0.5/s0"), ("params", "baseline/params/wanda/r0.5/s0")):
            scratch = stages[f"scratch/{shape}/wanda/r0.5/s{seed}/equal_total/R4k"]
            assert scratch.deps == (source, "data") and scratch.spec.seed == seed
            assert stages[f"eval/{scratch.id}"].info["seed"] == seed
    seeded = study_config.from_dict({**MINI, "seeds": [3, 7]})
    ids = [s.id for s in plan.build(seeded)]
    assert "prune/wanda/r0.5/s3" in ids and "retrain/wanda/r0.5/s7/R4k" in ids and "prune/wanda/r0.5/s7" not in ids


def test_dense_controls_retrain_the_parent_with_the_pruned_models_recipe():
    assert not any(s.id.startswith("control/") for s in plan.build(study_config.from_dict(MINI)))  # opt-in
    study = study_config.from_dict({**MINI, "seeds": 2, "dense_control": ["continue", "once"]})
    stages = {s.id: s for s in plan.build(study)}
    for seed in (0, 1):
        for budget in ("2k", "4k"):
            cont = stages[f"control/continue/s{seed}/R{budget}"]
            retrain = stages[f"retrain/wanda/r0.5/s{seed}/R{budget}"]
            assert cont.kind == "retrain" and cont.deps == ("parent", "data")
            assert cont.spec == retrain.spec  # the same tokens [P+1, P+R+1], recipe and data order
            assert stages[f"eval/{cont.id}"].info["setting"] == "continue"
        once = stages[f"control/once/s{seed}/R4k"]  # the largest budget only: the equal-total setting
        assert once.kind == "scratch" and once.deps == ("parent", "data")
        assert once.spec.tokens == 6_000 + 4_000 and not once.spec.reinit and once.spec.seed == seed
        assert once.spec.train == cont.spec.train
        assert f"control/once/s{seed}/R2k" not in stages
    assert study_config.from_dict({**MINI, "dense_control": "once"}).dense_control == ("once",)


@pytest.mark.parametrize(
    "change",
    [
        {"ratios": [0.5, 0.5]},
        # distinct values, one id r0.333333 (a sparse method: a 2-layer parent's depth ratios are 0.5 only)
        {"ratios": [0.3333333, 0.33333334], "methods": ["wanda"]},
        {"retrain_budgets": ["2k", "2000"]},
        {"retrain_budgets": ["10k", "10001"]},  # one id R10k
        {"seeds": [0, 0]},
    ],
)
def test_two_grid_cells_never_share_a_stage(change):
    with pytest.raises(ConfigError, match="two grid cells map to stage .*list each once"):
        plan.build(study_config.from_dict({**MINI, **change}))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"methods": ["minitron-dept"]}, "methods[0].name: unknown method 'minitron-dept'; valid methods: magnitude"),
        (
            {"methods": [{"name": "sparsegpt", "pattern": "2:4"}], "ratios": [0.8]},
            "study config: methods[0].pattern: 2:4 prunes 0.5, not ratio 0.8",
        ),
        ({"ratios": [1.2]}, "ratio 1.2 of minitron-depth is outside (0, 1)"),
        ({"retrain_budgets": [100]}, "smaller than one training step (512 tokens)"),
        ({"parent": {"import": "/nonexistent/model"}}, "parent path /nonexistent/model does not exist"),
        ({"scratch_shapes": ["bigger"]}, "unknown scratch_shapes ['bigger']"),
        ({"evaluation": {}}, "unknown key(s) evaluation"),
        ({"seed": 3}, "unknown key(s) seed; valid: "),
        ({"seeds": 0}, "seeds: 0 asks for no runs"),
        ({"seeds": []}, "seeds: must be a count (e.g. 3) or a non-empty list of integers, got []"),
        ({"seeds": [0, "1"]}, "seeds[1]: expected a whole number, got '1'"),
        ({"seeds": True}, "seeds: must be a count (e.g. 3) or a non-empty list of integers, got True"),
        ({"dense_control": ["continued"]}, "unknown dense_control ['continued']; valid: continue, once"),
        ({"dense_control": True}, "study config: dense_control: expected a list, got True"),
        (
            {"dense_control": ["once"], "parent": {"import": "configs/train/tiny.yaml"}},
            "dense_control 'once' retrains the parent's architecture for P+R tokens",
        ),
        ({"methods": [{"name": "minitron-width", "ratios": [0.9]}]}, "minitron-width cannot reach ratio 0.9"),
    ],
)
def test_bad_study_configs(change, message):
    with pytest.raises(ConfigError) as e:
        plan.build(study_config.from_dict({**MINI, **change}))  # all before any work starts
    assert message in str(e.value)


# ---- end to end ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mini_study(tmp_path_factory):
    """Run the miniature study once, interrupting it in the middle of the first retraining stage."""
    study = study_config.from_dict(MINI)
    out = str(tmp_path_factory.mktemp("study") / "mini")
    runner = Runner(study, out)
    real = STAGES["retrain"]

    def interrupted(runner, stage):
        raise KeyboardInterrupt  # what a Ctrl-C or a killed job leaves behind: a stage marked running

    STAGES["retrain"] = interrupted
    first: list[str] = []
    try:
        runner.run(log=first.append)
        raise AssertionError("the interrupted stage was never reached:\n" + "\n".join(first))
    except KeyboardInterrupt:
        pass
    finally:
        STAGES["retrain"] = real
    second: list[str] = []
    rc = Runner(study, out).run(log=second.append)
    return study, out, first, second, rc


def test_mini_study_resumes_without_redoing_finished_stages(mini_study):
    study, out, first, second, rc = mini_study
    assert rc == 0, second[-1]
    finished_before = [line.split("]")[1].split(":")[0].strip() for line in first]
    assert finished_before[:3] == ["tokenizer", "data", "parent"]
    for stage_id in finished_before:
        assert any(line.endswith(f"{stage_id}: done (cached)") for line in second), stage_id
    rerun = [line for line in second if "(cached)" not in line and line.startswith("[")]
    assert rerun[0].split("]")[1].strip().startswith("retrain/")  # the interrupted stage runs again
    assert all("done" in line for line in rerun)


def test_mini_study_report(mini_study):
    study, out, _, _, _ = mini_study
    paths = report.write_report(out)
    text = open(paths["markdown"]).read()
    for needle in (
        "## Findings",
        "1. Equal training tokens",
        "2. The advantage narrows as the retraining budget",
        "3. Ratio trend: **not measured**",
        "4. At equal total tokens",
        "| wanda | unstructured | 0.5 | 2,000 |",
        "figure1_left.png",
        "figure1_right.png",
    ):
        assert needle in text, needle
    assert os.path.getsize(os.path.join(out, "figure1_left.png")) > 10_000
    rows = open(os.path.join(out, "comparison.csv")).read().splitlines()
    assert len(rows) == 1 + 3 * 2  # header + (3 methods x 2 budgets)
    _, results = report.load_results(out)
    assert all(r["val_loss"] is not None and r["val_loss"] > 0 for r in results)
    match = open(os.path.join(out, "baseline/params/wanda/r0.5/s0/match.json")).read()
    assert '"quantity": "params"' in match


def test_same_shape_scratch_runs_are_trained_once(mini_study):
    # one layer of two: both depth methods give the same shape, and so does matching the parameter count
    _, out, _, _, _ = mini_study
    for setting, budget in (("equal_train", "R2k"), ("equal_train", "R4k"), ("equal_total", "R4k")):
        first = f"scratch/same/minitron-depth/r0.5/s0/{setting}/{budget}"
        assert not os.path.exists(os.path.join(out, first, "same_as.json"))
        for reused in (
            f"scratch/{shape}/{method}/r0.5/s0/{setting}/{budget}"
            for shape, method in (("same", "shortgpt"), ("params", "shortgpt"), ("params", "minitron-depth"))
        ):
            with open(os.path.join(out, reused, "same_as.json")) as f:
                assert json.load(f)["stage"] == first
            for name in ("final/config.json", "final/model.safetensors", "metrics.jsonl"):
                with open(os.path.join(out, first, name), "rb") as a, open(os.path.join(out, reused, name), "rb") as b:
                    assert a.read() == b.read(), (reused, name)
            # reused, not retrained: the weights are the same file; appendable logs are the reuser's own copy
            weights = [os.path.join(out, d, "final/model.safetensors") for d in (first, reused)]
            assert os.path.samefile(*weights)
            assert not os.path.samefile(
                os.path.join(out, first, "metrics.jsonl"), os.path.join(out, reused, "metrics.jsonl")
            )
    # the sparse control keeps its own masks: never shared
    for path in glob.glob(os.path.join(out, "scratch/same/wanda/r0.5/s0/*/*")):
        assert not os.path.exists(os.path.join(path, "same_as.json")), path


def test_changed_config_names_invalidated_stages(mini_study):
    study, out, _, _, _ = mini_study
    changed = dataclasses.replace(study, calibration=dataclasses.replace(study.calibration, samples=8))
    with pytest.raises(StudyError) as e:
        Runner(changed, out).run(log=lambda s: None)
    msg = str(e.value)
    assert "prune/wanda/r0.5/s0" in msg and "retrain/wanda/r0.5/s0/R2k" in msg
    assert "\n  parent\n" not in msg and "--rerun-changed" in msg


def test_an_error_in_a_stage_arrives_as_its_exception_and_fails_the_stage(tmp_path):
    from prunejax.data.store import DataError
    from prunejax.study.runner import read_marker

    missing = str(tmp_path / "no-tokenizer")
    study = study_config.from_dict({**MINI, "data": {**MINI["data"], "tokenizer": missing}})
    runner = Runner(study, str(tmp_path / "s"))
    with pytest.raises(DataError, match="not a tokenizer directory") as e:  # the verb's own error, not an exit
        STAGES["data"](runner, runner.by_id["data"])
    log: list[str] = []
    assert runner.run(log=log.append) == 1
    marker = read_marker(runner.dir, "data")
    assert marker["status"] == "failed" and marker["error"] == f"DataError: {e.value}"
    assert log[0].endswith(f"data: failed in {marker['seconds']:.1f}s — DataError: {e.value}")
    assert "failed: data;" in log[-1] and f"{len(runner.stages) - 1} stages skipped" in log[-1]
    index = json.load(open(os.path.join(runner.dir, "stages.json")))["stages"]
    assert [(s["id"], s["status"], s["error"]) for s in index][0] == ("data", "failed", f"DataError: {e.value}")


def test_an_interrupted_study_exits_130_with_the_resume_hint(tmp_path, monkeypatch, capsys):
    from prunejax.study import runner

    def stop(self, rerun_changed=False, log=print):
        raise runner.StudyInterrupted("retrain/wanda/r0.5/s0/R2k")

    monkeypatch.setattr(runner.Runner, "run", stop)
    config = tmp_path / "mini.yaml"
    import yaml

    config.write_text(yaml.safe_dump(MINI))
    assert runner.main([str(config), "--out", str(tmp_path / "s")]) == 130
    assert "study stopped during retrain/wanda/r0.5/s0/R2k; run the same command again" in capsys.readouterr().err


SEEDED = {  # the miniature study with two seeds and both dense controls, cut to one method and one budget
    **MINI,
    "name": "seeded",
    "parent": {**MINI["parent"], "tokens": "2k"},
    "methods": ["wanda"],
    "retrain_budgets": ["1k"],
    "scratch_shapes": ["same"],
    "seeds": 2,
    "dense_control": ["continue", "once"],
}


def test_a_seeded_study_with_dense_controls_runs_and_reports_its_noise(tmp_path):
    study = study_config.from_dict(SEEDED)
    out = str(tmp_path / "seeded")
    log: list[str] = []
    assert Runner(study, out).run(log=log.append) == 0, log[-1]

    def run_json(stage_id):
        with open(os.path.join(out, stage_id, "run.json")) as f:
            return json.load(f)

    # the continued parent trains exactly as the pruned model does (recipe, token range, seed), from the parent
    for seed in (0, 1):
        cont, retrain = run_json(f"control/continue/s{seed}/R1k"), run_json(f"retrain/wanda/r0.5/s{seed}/R1k")
        assert cont["train"] == retrain["train"] and cont["train"]["seed"] == seed
        assert cont["train"]["data_offset"] == 2_001 and cont["model"]["init"].endswith("/parent/final")
        assert retrain["model"]["init"].endswith("/prune/wanda/r0.5/s0")  # one pruning for both seeds
        once = run_json(f"control/once/s{seed}/R1k")  # the parent's shape from random init, one schedule on P+R
        assert once["model"]["scratch"].endswith("/parent/final") and once["tokens"] == 3_000
        assert (once["train"]["data_offset"], once["train"]["data_count"]) == (0, 3_001)
    _, rows = report.load_results(out)
    loss = {r["model"]: r["val_loss"] for r in rows}
    for prefix in ("retrain/wanda/r0.5/s{}/R1k", "scratch/same/wanda/r0.5/s{}/equal_train/R1k", "control/once/s{}/R1k"):
        assert loss[prefix.format(0)] != loss[prefix.format(1)], prefix  # the seed changes the run

    text = open(report.write_report(out)["markdown"]).read()
    for needle in (
        "Seeds: 0, 1 (2 per cell;",
        "## Second schedule vs pruning (dense controls)",
        "Dense control at R=1,000 (splits finding 4's gap)",
        "figure1_right.png",
    ):
        assert needle in text, needle
    assert "Missing results" not in text
    with open(os.path.join(out, "comparison.csv")) as f:
        (table,) = list(csv.DictReader(f))
    assert table["pruned_n"] == "2/2" and table["once_n"] == "2/2" and float(table["pruned_sd"]) > 0
    mean = (loss["retrain/wanda/r0.5/s0/R1k"] + loss["retrain/wanda/r0.5/s1/R1k"]) / 2
    assert float(table["pruned"]) == pytest.approx(mean, rel=1e-12)
    once = (loss["control/once/s0/R1k"] + loss["control/once/s1/R1k"]) / 2
    cont = (loss["control/continue/s0/R1k"] + loss["control/continue/s1/R1k"]) / 2
    assert float(table["schedule_cost"]) == pytest.approx(cont - once, rel=1e-9)
    assert float(table["pruning_cost"]) == pytest.approx(mean - cont, rel=1e-9)

    # a seed whose result is lost is reported missing, not averaged away
    os.remove(os.path.join(out, "eval/retrain/wanda/r0.5/s1/R1k/results.json"))
    text = open(report.write_report(out)["markdown"]).read()
    assert "Missing results: 1 cell(s) have fewer seeds than planned" in text
    assert "pruned of wanda@0.5/R=1,000: n=1/2" in text and "(n=1/2)" in text.split("## Pruned vs scratch")[1]
    _, rows = report.load_results(out)
    assert [r["val_loss"] for r in rows if r["model"] == "retrain/wanda/r0.5/s1/R1k"] == [None]


def test_parent_curve_and_its_last_quarter_from_metrics(tmp_path):
    assert report.parent_curve(str(tmp_path)) == []  # an imported parent has no RUN_DIR
    (tmp_path / "parent").mkdir()
    records = [
        {"step": 10, "tokens": 1000, "loss": 5.0},
        {"step": 25, "tokens": 2500, "val_loss": 4.0},
        {"step": 50, "tokens": 5000, "val_loss": 3.0},
        {"step": 70, "tokens": 7000, "val_loss": 2.6},
        {"step": 80, "tokens": 8000, "val_loss": 2.4},
        {"step": 100, "tokens": 10000, "val_loss": 2.3},
    ]
    (tmp_path / "parent" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = report.parent_curve(str(tmp_path))
    assert lines[4:9] == [
        "| 2,500 | 4.0000 |",
        "| 5,000 | 3.0000 |",
        "| 7,000 | 2.6000 |",
        "| 8,000 | 2.4000 |",
        "| 10,000 | 2.3000 |",
    ]
    assert lines[-1] == (  # 2.5 at 7,500 tokens, halfway between the points around it
        "Over the last quarter of its tokens (7,500 -> 10,000) the parent's validation loss fell "
        "from 2.5000 (interpolated) to 2.3000 (8.00%)."
    )
    (tmp_path / "parent" / "metrics.jsonl").write_text(json.dumps(records[-1]) + "\n")
    assert report.parent_curve(str(tmp_path)) == []  # one final validation is no curve


def test_the_report_names_an_imported_parent_and_a_single_seed():
    imported = {"parent_tokens": 0, "parent_import": "/x/y/SmolLM2-135M-Instruct.Q4_1.gguf"}
    assert report._parent_line(imported, 3.394) == (
        "Parent: imported from `SmolLM2-135M-Instruct.Q4_1.gguf` (pretrained outside the study); "
        "validation loss 3.394 on this study's held-out data."
    )
    pretrained = report._parent_line({"parent_tokens": 150_000}, 4.469)
    assert pretrained == "Parent validation loss: 4.469 after 150,000 tokens."
    one = [{k: None for k in report.STATS}]
    assert report._seeds_line({"stages": []}, []) == []
    line = report._seeds_line({"stages": []}, one)[0]
    assert line.startswith("Seeds: one per cell, so no gap has a noise band: each is called by its sign alone")
