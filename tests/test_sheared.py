"""Sheared-LLaMA: hard-concrete gates, gated forward == folded forward, convergence to an exact target
shape, transformers parity of the export, exact resume (after stop_after and after SIGTERM), NaN caught,
and clear errors on bad input.

Tolerances: 1e-5 for the gate math, 1e-4 for whole-model logits in float32 (the policy of STYLE.md).
"""

import dataclasses
import glob
import json
import os
import shlex
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prunejax import hf, model
from prunejax.config import TINY, ConfigError
from prunejax.data.store import TokenStore, write_data_dir
from prunejax.prune import sheared as sh
from prunejax.prune import sheared_gates as sg
from prunejax.prune.masks import PruneError
from prunejax.prune.shapes import Target
from prunejax.prune.sheared_model import fold, masked_forward
from prunejax.sharding import make_mesh
from prunejax.train.loop import Stopped, TrainingDiverged

CFG = TINY  # 4 layers, hidden 64, FFN 176, 4 q-heads / 2 kv-heads, head_dim 16
GOAL = CFG.replace(
    num_hidden_layers=2, hidden_size=32, intermediate_size=88, num_attention_heads=2, num_key_value_heads=1
)
SC = sh.load_config(seq_len=16, batch_size=4, log_every=1000, ckpt_every=30, mesh_data=2, mesh_fsdp=2, mesh_tp=2)
BUDGET = 100 * SC.tokens_per_step  # 100 steps, Lagrangian warmup 20


@pytest.fixture(scope="module")
def params():
    return model.init_params(CFG, jax.random.key(0))


def learnable_store(path: str) -> TokenStore:
    """A DATA_DIR of learnable text: a noisy repeating sequence, so the LM loss has something to keep."""
    rng = np.random.default_rng(0)
    base = rng.integers(1, CFG.vocab_size, 97)
    toks = np.tile(base, 300)
    noise = rng.random(toks.size) < 0.1
    toks[noise] = rng.integers(1, CFG.vocab_size, noise.sum())
    write_data_dir(path, {"train": [toks], "validation": [toks[:500]]}, vocab_size=CFG.vocab_size, eos_id=0)
    return TokenStore(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return learnable_store(str(tmp_path_factory.mktemp("data") / "d"))


@pytest.fixture(scope="module")
def full_run(params, store):
    """One uninterrupted pruning stage (no run dir), shared by the convergence and resume tests."""
    return sh.train_gates(CFG, params, GOAL, SC, store, BUDGET, log=lambda s: None)


def random_log_alpha(seed: int = 1) -> sg.Gates:
    keys = jax.random.split(jax.random.key(seed), 4)
    return {g: 2.0 * jax.random.normal(k, s) for k, (g, s) in zip(keys, sg.gate_shapes(CFG).items(), strict=True)}


def tokens(b: int = 2, length: int = 12) -> jax.Array:
    return jax.random.randint(jax.random.key(7), (b, length), 0, CFG.vocab_size)


# ---- gate math ---------------------------------------------------------------------------------
def test_keep_probability_matches_sampling():
    la = jnp.array([-3.0, -1.0, 0.0, 1.5, 4.0])
    samples = jax.vmap(lambda k: sg.sample_gates({g: la for g in sg.GROUPS}, k)["ffn"])(
        jax.random.split(jax.random.key(0), 40000)
    )
    assert float(samples.min()) == 0.0 and float(samples.max()) == 1.0  # hard zeros and ones occur
    np.testing.assert_allclose(np.mean(samples > 0, axis=0), sg.keep_prob(la), atol=0.01)
    # P(z>0) = sigmoid(log_alpha - beta*log(-l/r)) = sigmoid(log_alpha + 1.5986) with l=-0.1, r=1.1
    np.testing.assert_allclose(sg.keep_prob(jnp.array(0.0)), 1 / (1 + np.exp(-(2 / 3) * np.log(11))), rtol=1e-5)


def test_top_k_ties_keep_lower_index():
    np.testing.assert_array_equal(sg.top_k_index(np.array([1.0, 3.0, 3.0, 2.0]), 2), [1, 2])
    np.testing.assert_array_equal(sg.top_k_index(np.array([2.0, 2.0, 2.0]), 1), [0])
    np.testing.assert_array_equal(sg.top_k_index(np.array([[0.0, 5.0, 5.0], [4.0, 4.0, 1.0]]), 2), [[1, 2], [0, 1]])


def test_deterministic_gates_hit_target_counts_exactly():
    z, keep = sg.deterministic_gates(random_log_alpha(), GOAL)
    assert keep["layers"].sum() == 2 and keep["hidden"].sum() == 32
    assert (keep["heads"].sum(-1) == 1).all() and (keep["ffn"].sum(-1) == 88).all()
    np.testing.assert_array_equal(z["hidden"], keep["hidden"])
    assert all(np.all(z[g][~keep[g]] == 0) for g in sg.GROUPS)


def test_lagrangian_value_and_direction():
    la = {g: jnp.full(s, 4.6) for g, s in sg.gate_shapes(CFG).items()}
    lam = {g: jnp.array([1.0, 1.0]) for g in sg.GROUPS}
    loss0, _ = sg.lagrangian(la, lam, CFG, GOAL, jnp.array(0.0))
    expected_sparsity = 1 - float(sg.keep_prob(jnp.array(4.6)))  # identical for every group
    np.testing.assert_allclose(float(loss0), 4 * (expected_sparsity + expected_sparsity**2), rtol=1e-4)
    # The quadratic term alone pulls toward the target: descent lowers every log-alpha (prunes).
    quad = {g: jnp.array([0.0, 1.0]) for g in sg.GROUPS}
    grads = jax.grad(lambda a: sg.lagrangian(a, quad, CFG, GOAL, jnp.array(1.0))[0])(la)
    assert all(float(g.min()) > 0 for g in grads.values())
    # A positive lambda1 penalizes sparsity itself: its gradient raises log-alphas (ascent on lambda1
    # makes it positive when the masks overshoot the target).
    lin = {g: jnp.array([1.0, 0.0]) for g in sg.GROUPS}
    grads = jax.grad(lambda a: sg.lagrangian(a, lin, CFG, GOAL, jnp.array(1.0))[0])(la)
    assert all(float(g.max()) < 0 for g in grads.values())


# ---- gated forward and fold --------------------------------------------------------------------
def test_all_open_gates_equal_plain_forward(params):
    ones = {g: jnp.ones(s) for g, s in sg.gate_shapes(CFG).items()}
    plain = model.forward(CFG, params, tokens())
    np.testing.assert_allclose(masked_forward(CFG, params, ones, tokens()), plain, atol=1e-5)
    np.testing.assert_allclose(masked_forward(CFG, params, ones, tokens(), remat=True), plain, atol=1e-5)


def test_gated_forward_runs_the_models_blockwise_attention(params):
    """The gated forward takes the model's attention implementations: the `xla` one's query blocks (4
    here) give the same logits as the CPU lowering's, with sampled gates, and with remat."""
    z = sg.sample_gates(random_log_alpha(), jax.random.key(3))
    full = masked_forward(CFG, params, z, tokens(length=12), attention="cpu")
    for remat in (False, True):
        blocked = masked_forward(CFG, params, z, tokens(length=12), block=4, remat=remat, attention="xla")
        np.testing.assert_allclose(blocked, full, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_fold_equals_gated_forward(params, binary):
    z, keep = sg.deterministic_gates(random_log_alpha(), GOAL)
    if binary:
        z = {g: k.astype(np.float32) for g, k in keep.items()}
    else:  # soft values are folded into the weights, and a kept gate may even be 0
        assert any(0 < v < 1 for g in ("layers", "heads", "ffn") for v in z[g][keep[g]])
        assert any(np.any(z[g][keep[g]] == 0) for g in ("heads", "ffn"))
    new_cfg, new_params = fold(CFG, params, z, keep)
    assert new_cfg == GOAL
    shapes = jax.tree.map(lambda x: x.shape, new_params)
    expected = jax.tree.map(lambda x: x.shape, jax.eval_shape(lambda: model.init_params(GOAL, jax.random.key(0))))
    assert shapes == expected
    np.testing.assert_allclose(
        model.forward(new_cfg, new_params, tokens()), masked_forward(CFG, params, z, tokens()), atol=1e-4
    )


def test_fold_keeps_two_of_three_kv_groups():
    # 9 q-heads / 3 kv-heads -> 6 / 2 (SmolLM2's geometry): the head counts must change together.
    cfg = CFG.replace(hidden_size=72, num_attention_heads=9, num_key_value_heads=3, head_dim=8)
    goal = cfg.replace(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, intermediate_size=88)
    p = model.init_params(cfg, jax.random.key(2))
    la = {g: jax.random.normal(jax.random.key(i), s) for i, (g, s) in enumerate(sg.gate_shapes(cfg).items())}
    z, keep = sg.deterministic_gates(la, goal)
    new_cfg, new_params = fold(cfg, p, z, keep)
    assert new_cfg == goal
    np.testing.assert_allclose(
        model.forward(new_cfg, new_params, tokens()), masked_forward(cfg, p, z, tokens()), atol=1e-4
    )


def test_fold_tied_embeddings(params):
    cfg = CFG.replace(tie_word_embeddings=True)
    p = {k: v for k, v in params.items() if k != "lm_head"}
    z = {g: k.astype(np.float32) for g, k in sg.deterministic_gates(random_log_alpha(3), GOAL)[1].items()}
    new_cfg, new_params = fold(cfg, p, z)
    np.testing.assert_allclose(
        model.forward(new_cfg, new_params, tokens()), masked_forward(cfg, p, z, tokens()), atol=1e-4
    )


def test_fold_rejects_unfoldable_gates(params):
    z, keep = sg.deterministic_gates(random_log_alpha(), GOAL)
    with pytest.raises(PruneError, match="hidden gates must be 1 where kept"):
        fold(CFG, params, {**z, "hidden": z["hidden"] * 0.5}, keep)
    layer = np.flatnonzero(keep["layers"])[0]
    keep["ffn"][layer, np.flatnonzero(keep["ffn"][layer])[0]] = False  # one layer keeps 87, the other 88
    with pytest.raises(PruneError, match="ffn gates keep"):
        fold(CFG, params, z, keep)


# ---- the stage ---------------------------------------------------------------------------------
def test_stage_converges_and_export_matches_transformers(params, full_run, tmp_path):
    gaps = sg.check_reached(full_run["extra"]["log_alpha"], CFG, GOAL, SC.fold_tolerance)
    assert abs(gaps["layers"]) < 0.5 and abs(gaps["heads"]) < 0.5
    assert abs(gaps["hidden"]) < 0.05 * 64 and abs(gaps["ffn"]) < 0.05 * 176
    gates, keep = sg.deterministic_gates(full_run["extra"]["log_alpha"], GOAL)
    new_cfg, new_params = fold(CFG, jax.device_get(full_run["params"]), gates, keep)
    assert new_cfg == GOAL  # exactly the target shape
    out = hf.save(str(tmp_path / "m"), new_cfg, new_params)

    import torch
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    t = tokens()
    with torch.no_grad():
        ref = hf_model(torch.tensor(np.asarray(t))).logits.numpy()
    np.testing.assert_allclose(model.forward(new_cfg, new_params, t), ref, atol=1e-4)


def test_resume_mid_stage_continues_exactly(params, store, full_run, tmp_path):
    run = str(tmp_path / "run")
    sh.train_gates(CFG, params, GOAL, SC, store, BUDGET, run_dir=run, stop_after=45, log=lambda s: None)
    assert sorted(int(d) for d in os.listdir(os.path.join(run, "checkpoints")) if d.isdigit())[-1] == 45
    logs = []
    resumed = sh.train_gates(CFG, params, GOAL, SC, store, BUDGET, run_dir=run, log=logs.append)
    assert "resumed" in logs[0] and "step 45" in logs[0]
    for key in ("params", "extra", "opt_state", "step"):  # extra: the log-alphas and lambdas
        jax.tree.map(np.testing.assert_array_equal, resumed[key], full_run[key])
    with open(os.path.join(run, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, 101))
    # Three runs of the same setting (full, interrupted, resumed) share one compiled step.
    jitted = sh._jitted_step(CFG, GOAL, SC, sh.plan(SC, BUDGET), sh.make_stage_mesh(SC))
    assert jitted._cache_size() == 1
    with pytest.raises(PruneError, match="other settings"):
        sh.train_gates(CFG, params, GOAL, dataclasses.replace(SC, seed=1), store, BUDGET, run_dir=run)


def _saved_steps(run_dir):
    return sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(run_dir, "checkpoints", "[0-9]*")))


def test_sigterm_saves_a_checkpoint_and_the_resumed_stage_matches(params, store, full_run, tmp_path):
    run = str(tmp_path / "run")

    def preempt(step):
        if step == 50:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Stopped) as stopped:
        sh.train_gates(CFG, params, GOAL, SC, store, BUDGET, run_dir=run, on_step=preempt, log=lambda s: None)
    assert stopped.value.signum == signal.SIGTERM and _saved_steps(run) == [30, 50]
    resumed = sh.train_gates(CFG, params, GOAL, SC, store, BUDGET, run_dir=run, log=lambda s: None)
    jax.tree.map(np.testing.assert_array_equal, resumed, full_run)  # the whole state, bit for bit
    assert json.load(open(os.path.join(run, "run.json")))["steps"] == 100


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(params, store, tmp_path):
    run = str(tmp_path / "run")
    with pytest.raises(TrainingDiverged, match=r"at step (\d+)") as err:
        sc = dataclasses.replace(SC, lr=1e30, ckpt_every=1)
        sh.train_gates(CFG, params, GOAL, sc, store, BUDGET, run_dir=run, log=lambda s: None)
    bad = int(err.value.args[0].split("at step ")[1].split(":")[0])
    assert _saved_steps(run) and max(_saved_steps(run)) < bad


# ---- bad input ---------------------------------------------------------------------------------
def test_bad_targets(params, store):
    kw = {"data": store, "prune_tokens": BUDGET, "config": SC}
    with pytest.raises(PruneError, match="larger than the model"):
        sh.sheared(CFG, params, target=Target(hidden=128), **kw)
    with pytest.raises(PruneError, match="multiple of the GQA group size 2"):
        sh.sheared(CFG, params, target=Target(heads=3), **kw)
    with pytest.raises(PruneError, match="not a multiple of the 4 q-heads: transformers cannot load"):
        sh.sheared(CFG, params, target=Target(hidden=34), **kw)
    # the stage itself refuses such a shape with the same shared message (shapes.check_loadable)
    with pytest.raises(PruneError, match="hidden=33 is not a multiple of the 2 q-heads: transformers cannot load"):
        sh.train_gates(CFG, params, GOAL.replace(hidden_size=33), SC, store, BUDGET)
    with pytest.raises(PruneError, match="--data"):
        sh.sheared(CFG, params, ratio=0.5, prune_tokens=BUDGET)
    with pytest.raises(PruneError, match="group size"):
        sg.validate_target(CFG, GOAL.replace(num_attention_heads=4, num_key_value_heads=1))


def test_budget_too_small_for_lagrangian_warmup():
    with pytest.raises(PruneError, match=r"gives 10 step\(s\).*needs at least 4 steps: give at least 1,280 tokens"):
        sh.plan(SC, 10 * SC.tokens_per_step)
    assert sh.plan(SC, 20 * SC.tokens_per_step).lagrangian_warmup == 4


def test_masks_short_of_target_fail_with_the_gap():
    fresh = sg.init_log_alpha(CFG, jax.random.key(0))  # all gates open: far from the target
    with pytest.raises(PruneError, match=r"layers: expected 3\.99 vs target 2 \(gap \+1\.99\)"):
        sg.check_reached(fresh, CFG, GOAL, 0.05)


def test_data_range_too_short(params, store):
    with pytest.raises(ValueError, match="needs tokens"):
        sh.train_gates(CFG, params, GOAL, SC, store, 10**6)


def test_configs_load_and_reject_unknown_keys():
    root = os.path.join(os.path.dirname(__file__), "..", "configs", "prune")
    assert sh.load_config(os.path.join(root, "sheared.yaml")) == sh.ShearedConfig()
    assert sh.load_config(os.path.join(root, "sheared_tiny.yaml")).tokens_per_step == 128
    with pytest.raises(ConfigError, match="unknown key"):
        sh.load_config(lagr_warmup=3)
    with pytest.raises(ConfigError, match="lagrangian_warmup_frac"):
        sh.load_config(lagrangian_warmup_frac=1.5)
    with pytest.raises(ConfigError, match="does not split over data x fsdp = 8"):
        sh.make_stage_mesh(sh.load_config(batch_size=4))
    given = make_mesh(data=1, fsdp=4, tp=2)  # a mesh passed in replaces the config's sizes, same check
    assert sh.make_stage_mesh(SC, given) is given
    with pytest.raises(ConfigError, match="does not split over data x fsdp = 8"):
        sh.make_stage_mesh(SC, make_mesh(data=-1))


# ---- CLI ---------------------------------------------------------------------------------------
def test_cli_prune_sheared_writes_exact_target_model_dir(params, store, tmp_path, capsys):
    from prunejax.cli import main

    parent = hf.save(str(tmp_path / "parent"), CFG, params)
    conf = tmp_path / "sheared.yaml"
    conf.write_text(
        "".join(
            f"{k}: {getattr(SC, k)}\n"
            for k in ("seq_len", "batch_size", "log_every", "ckpt_every", "mesh_data", "mesh_fsdp", "mesh_tp")
        )
    )
    args = ["prune", "--model", parent, "--method", "sheared", "--target", "layers=2,hidden=32,ffn=88,heads=2"]
    args += ["--data", store.data_dir, "--sheared-config", str(conf), "--seed", "0", "--out", str(tmp_path / "out")]
    assert main(args) == 1  # no --prune-tokens
    assert "--prune-tokens" in capsys.readouterr().err
    assert main([*args, "--prune-tokens", str(BUDGET + 5)]) == 0  # only whole steps are used
    cfg, pruned = hf.load(str(tmp_path / "out"))
    assert cfg.replace(torch_dtype=GOAL.torch_dtype) == GOAL
    record = hf.load_provenance(str(tmp_path / "out"))
    assert record["method"] == "sheared" and record["prune_tokens"] == BUDGET
    assert record["realized_ratio"] == pytest.approx(1 - GOAL.linear_params() / CFG.linear_params())
    assert record["report"]["data"]["fingerprint"] == store.fingerprint
    assert (
        main(
            ["prune", "--model", parent, "--method", "magnitude", "--ratio", "0.5", "--prune-tokens", "5", "--out", "x"]
        )
        == 1
    )
    assert "apply to sheared only" in capsys.readouterr().err


def test_cli_prune_stopped_by_a_signal_exits_as_train_does(params, tmp_path, capsys, monkeypatch):
    from prunejax.cli import main
    from prunejax.prune import registry

    def stopped(*args, **kwargs):
        raise Stopped(str(tmp_path / "run"), signal.SIGTERM)

    monkeypatch.setitem(registry.METHODS, "sheared", stopped)  # wherever the CLI looks the method up
    parent = hf.save(str(tmp_path / "parent"), CFG, params)
    args = ["prune", "--model", parent, "--method", "sheared", "--ratio", "0.5", "--data", "d", "--prune-tokens", "9"]
    assert main([*args, "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 128 + signal.SIGTERM
    assert "stopped at a checkpoint; run the same command again" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "out")


def test_config_headers_parse_with_the_real_parser():
    from prunejax.prune.cli import parse_args

    root = os.path.join(os.path.dirname(__file__), "..")
    paths = sorted(glob.glob(os.path.join(root, "configs", "prune", "sheared*.yaml")))
    assert paths
    for path in paths:
        with open(path) as f:
            header = "".join(line[1:] for line in f if line.startswith("#")).replace("\\\n", " ")
        commands = [shlex.split(line)[2:] for line in header.splitlines() if line.strip().startswith("prunejax prune")]
        assert len(commands) == 1, path
        args = parse_args(commands[0])
        assert args.method == "sheared" and args.prune_tokens > 0, path
        assert os.path.samefile(os.path.join(root, args.sheared_config), path)
