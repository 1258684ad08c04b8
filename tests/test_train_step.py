"""The pure train step: hand-computed AdamW update, accumulation, masks, compile-once, 8 devices == 1,
and a pruning method's Objective (extra leaves with their own optimizer and projection)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from prunejax import model, sharding
from prunejax.config import TINY
from prunejax.train import optim
from prunejax.train import state as state_lib
from prunejax.train.config import TrainConfig
from prunejax.train.step import Objective, cross_entropy, distill_kl, make_loss, make_train_step
from prunejax.tree import leaf_paths

CFG = TINY.replace(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, head_dim=8)
TOTAL = 20


def _batch(seed: int, accum: int, micro: int, seq: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    windows = rng.integers(0, CFG.vocab_size, (accum, micro, seq + 1)).astype(np.int32)
    return {"inputs": windows[..., :-1], "targets": windows[..., 1:]}


@functools.cache
def _params0():
    return jax.device_get(state_lib.random_params(CFG, jax.random.key(0)))


def _setup(tcfg: TrainConfig, masks=None, devices=None):
    mesh = sharding.make_mesh(data=-1, devices=devices)
    opt = optim.optimizer(tcfg, TOTAL)
    params = _params0()
    stacked = state_lib.scans_layers(CFG, masks, tcfg.attention, mesh)
    state = state_lib.place_state(mesh, state_lib.init_state(params, masks, opt, 0, stacked=stacked))
    fn = state_lib.jit_train_step(make_train_step(CFG, tcfg, opt, TOTAL), mesh, state)
    return mesh, state, fn


def test_schedule_warmup_then_cosine_to_ten_percent():
    tcfg = TrainConfig(peak_lr=1.0, warmup_frac=0.05)
    lr = optim.schedule(tcfg, 100)  # warmup 5 updates
    np.testing.assert_allclose([float(lr(i)) for i in range(5)], [0.2, 0.4, 0.6, 0.8, 1.0], rtol=1e-6)
    assert float(lr(99)) == pytest.approx(0.1, abs=1e-6)  # the last update uses the floor
    assert float(lr(52)) == pytest.approx(0.1 + 0.45 * (1 + np.cos(np.pi * 48 / 95)), rel=1e-5)


@pytest.mark.parametrize("attention", ["auto", "xla"])
def test_one_step_equals_hand_computed_adamw(attention):
    """Per layer (the CPU lowering) and stacked (`xla` scans the layers: one array per weight kind, where
    a norm gain is [n_layers, D] and still gets no weight decay)."""
    # eps=1e-3 keeps g/(|g|+eps) well-conditioned: with 1e-8 the first Adam step is sign(g), and
    # gradients of ~1e-9 (equal up to summation order) would flip whole updates
    tcfg = TrainConfig(seq_len=16, global_batch=8, clip_norm=1e9, weight_decay=0.1, eps=1e-3, attention=attention)
    mesh, state, fn = _setup(tcfg, devices=jax.devices()[:1])
    assert state_lib.is_stacked(state) == (attention == "xla")
    p0 = jax.device_get(state_lib.per_layer(mesh, state)["params"])
    batch = _batch(1, 1, 8)
    loss = jax.jit(lambda p, x, y: cross_entropy(model.forward(CFG, p, x), y))
    grads = jax.grad(loss)(p0, batch["inputs"][0], batch["targets"][0])
    new_state, metrics = fn(state, state_lib.global_batch(mesh, batch))
    lr = tcfg.peak_lr / 1  # warmup of max(1, round(0.05*20)) = 1 update: the first update uses the peak
    assert float(metrics["lr"]) == pytest.approx(lr)
    for path, g in leaf_paths(grads):
        p = np.asarray(_get(p0, path), np.float64)
        g = np.asarray(g, np.float64)
        m_hat = (1 - 0.9) * g / (1 - 0.9)  # bias-corrected first and second moments after one update
        v_hat = (1 - 0.95) * g * g / (1 - 0.95)
        decay = 0.1 * p if p.ndim >= 2 else 0.0
        expected = p - lr * (m_hat / (np.sqrt(v_hat) + 1e-3) + decay)
        got = np.asarray(_get(jax.device_get(state_lib.per_layer(mesh, new_state)["params"]), path))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7, err_msg="/".join(path))
    assert int(new_state["step"]) == 1


def test_layers_stack_and_unstack_literally():
    params = {
        "embed_tokens": np.zeros((3, 2)),
        "layers": {
            "0": {"mlp": {"up_proj": np.array([[1.0, 2.0]])}, "input_layernorm": np.array([1.0])},
            "1": {"mlp": {"up_proj": np.array([[3.0, 4.0]])}, "input_layernorm": np.array([2.0])},
        },
    }
    stacked = model.stack_layers(params)
    assert model.is_stacked(stacked) and not model.is_stacked(params)
    np.testing.assert_array_equal(stacked["layers"]["mlp"]["up_proj"], [[[1.0, 2.0]], [[3.0, 4.0]]])
    np.testing.assert_array_equal(stacked["layers"]["input_layernorm"], [[1.0], [2.0]])
    assert stacked["embed_tokens"] is params["embed_tokens"]
    back = model.unstack_layers(stacked)
    assert sorted(back["layers"]) == ["0", "1"]
    assert sorted(p for p, _ in leaf_paths(back)) == sorted(p for p, _ in leaf_paths(params))
    for path, b in leaf_paths(params):
        np.testing.assert_array_equal(_get(back, path), b, err_msg="/".join(path))
    assert model.stacked_path(("opt_state", "mu", "layers", "mlp", "up_proj"))
    assert not model.stacked_path(("layers", "1", "mlp", "up_proj")) and not model.stacked_path(("norm",))
    uneven = {"layers": {"0": params["layers"]["0"], "1": {"mlp": {"up_proj": np.ones((1, 3))}}}}
    with pytest.raises(ValueError, match="do not stack"):
        model.stack_layers(uneven)
    assert optim.decay_mask(stacked) == {
        "embed_tokens": True,
        "layers": {"mlp": {"up_proj": True}, "input_layernorm": False},
    }


def test_a_state_stacks_its_layers_only_where_the_step_scans_them():
    """On CPU the default (`auto`, the CPU lowering) unrolls the layers: the state stays per layer. A
    scanning implementation stacks them, masks included when every layer masks the same weights; the
    stacked leaves shard like their layers, with the layer axis whole."""
    mesh = sharding.make_mesh(data=2, fsdp=2, tp=2)
    assert not state_lib.scans_layers(CFG, None, "auto", mesh)
    assert state_lib.scans_layers(CFG, None, "xla", mesh) and state_lib.scans_layers(CFG, None, "splash", mesh)
    up = {"mlp": {"up_proj": np.ones((CFG.hidden_size, CFG.intermediate_size), bool)}}
    assert state_lib.scans_layers(CFG, {"layers": {"0": up, "1": up}}, "xla", mesh)
    assert not state_lib.scans_layers(CFG, {"layers": {"1": up}}, "xla", mesh)  # one layer masked: per layer
    down = {"mlp": {"down_proj": np.ones((CFG.intermediate_size, CFG.hidden_size), bool)}}
    assert not state_lib.scans_layers(CFG, {"layers": {"0": up, "1": down}}, "xla", mesh)
    opt = optim.optimizer(TrainConfig(), TOTAL)
    abstract = state_lib.abstract_state(CFG, {"layers": {"0": up, "1": up}}, opt, 0, mesh, stacked=True)
    q = abstract["params"]["layers"]["self_attn"]["q_proj"]
    assert q.shape == (CFG.num_hidden_layers, CFG.hidden_size, CFG.num_attention_heads, CFG.head_dim)
    assert q.sharding.spec == P(None, "fsdp", "tp", None)
    assert abstract["masks"]["layers"]["mlp"]["up_proj"].sharding.spec == P(None, "fsdp", "tp")
    mu = abstract["opt_state"][1][0].mu["layers"]["input_layernorm"]
    assert mu.shape == (CFG.num_hidden_layers, CFG.hidden_size) and mu.sharding.spec == P(None, "fsdp")
    per_layer = state_lib.per_layer_abstract(mesh, abstract)
    assert per_layer["params"]["layers"]["1"]["self_attn"]["q_proj"].sharding.spec == P("fsdp", "tp", None)


def test_clipping_scales_gradients_to_clip_norm():
    tcfg = TrainConfig(seq_len=16, global_batch=8, clip_norm=1e-3, weight_decay=0.0, beta1=0.0)
    mesh, state, fn = _setup(tcfg)
    p0 = jax.device_get(state["params"])
    new_state, metrics = fn(state, state_lib.global_batch(mesh, _batch(1, 1, 8)))
    assert float(metrics["grad_norm"]) > 1e-3  # reported before clipping
    # with beta1=0 the Adam direction is g/|g| elementwise: clipping (a global scale) cannot change it
    for path, p in leaf_paths(p0):
        step = np.asarray(_get(jax.device_get(new_state["params"]), path)) - np.asarray(p)
        assert np.all(np.abs(step) <= tcfg.peak_lr * (1 + 1e-4))


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def test_grad_accumulation_equals_one_big_batch():
    big = _batch(2, 1, 8)
    split = {k: v.reshape(4, 2, -1) for k, v in big.items()}
    results = []
    for accum, batch in ((1, big), (4, split)):
        tcfg = TrainConfig(seq_len=16, global_batch=8, grad_accum=accum)
        mesh, state, fn = _setup(tcfg, devices=jax.devices()[:1])
        for _ in range(3):
            state, metrics = fn(state, state_lib.global_batch(mesh, batch))
        results.append((float(metrics["loss"]), jax.device_get(state["params"])))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for (path, a), (_, b) in zip(leaf_paths(results[0][1]), leaf_paths(results[1][1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg="/".join(path))


def _random_masks(params, density=0.5, seed=3):
    rng = np.random.default_rng(seed)
    masks = {}
    for path, w in leaf_paths(params):
        if path[-1] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            node = masks
            for k in path[:-1]:
                node = node.setdefault(k, {})
            node[path[-1]] = rng.random(w.shape) < density
    return masks


def test_masked_weights_stay_exactly_zero():
    tcfg = TrainConfig(seq_len=16, global_batch=8, peak_lr=1e-2)
    masks = _random_masks(_params0())
    mesh, state, fn = _setup(tcfg, masks=masks)
    for i in range(TOTAL):
        state, _ = fn(state, state_lib.global_batch(mesh, _batch(10 + i, 1, 8)))
    params = jax.device_get(state["params"])
    for path, m in leaf_paths(masks):
        w = np.asarray(_get(params, path))
        assert np.all(w[~m] == 0), "/".join(path)
        assert np.all(w[m] != 0), "/".join(path)  # kept weights still train
    moments = jax.device_get(state["opt_state"][1][0].mu)
    for path, m in leaf_paths(masks):
        assert np.all(np.asarray(_get(moments, path))[~m] == 0)  # the update itself is masked


def test_init_state_rejects_mismatched_masks():
    params = _params0()
    bad = {"layers": {"0": {"mlp": {"up_proj": np.ones((3, 3), bool)}}}}
    with pytest.raises(ValueError, match="mask layers/0/mlp/up_proj has shape"):
        state_lib.init_state(params, bad, optim.optimizer(TrainConfig(), 10), 0)
    with pytest.raises(ValueError, match="names no weight"):
        state_lib.init_state(params, {"layers": {"9": {"mlp": {"up_proj": np.ones((3, 3), bool)}}}}, None, 0)


def test_train_step_compiles_once_with_bf16_compute_and_fp32_master():
    tcfg = TrainConfig(seq_len=16, global_batch=8, grad_accum=2, compute_dtype="bfloat16", remat=True)
    mesh = sharding.make_mesh(data=4, tp=2)
    opt = optim.optimizer(tcfg, TOTAL)
    state = state_lib.place_state(mesh, state_lib.init_state(_params0(), None, opt, 0))
    step = chex.assert_max_traces(make_train_step(CFG, tcfg, opt, TOTAL), n=1)
    fn = state_lib.jit_train_step(step, mesh, state)
    for i in range(4):
        state, metrics = fn(state, state_lib.global_batch(mesh, _batch(i, 2, 4)))
    assert np.isfinite(float(metrics["loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state["params"]))


def test_eight_devices_match_one():
    runs = []
    for devices, mesh_kw in ((jax.devices()[:1], {}), (jax.devices(), {"data": 2, "fsdp": 2, "tp": 2})):
        tcfg = TrainConfig(seq_len=16, global_batch=8, grad_accum=2)
        mesh = sharding.make_mesh(devices=devices, **({"data": -1} if not mesh_kw else mesh_kw))
        opt = optim.optimizer(tcfg, TOTAL)
        params = _params0()
        state = state_lib.place_state(mesh, state_lib.init_state(params, None, opt, 0))
        fn = state_lib.jit_train_step(make_train_step(CFG, tcfg, opt, TOTAL), mesh, state)
        losses = []
        for i in range(3):
            state, metrics = fn(state, state_lib.global_batch(mesh, _batch(i, 2, 4)))
            losses.append(float(metrics["loss"]))
        runs.append((losses, jax.device_get(state["params"])))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for (path, a), (_, b) in zip(leaf_paths(runs[0][1]), leaf_paths(runs[1][1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg="/".join(path))


def test_distillation_loss():
    logits = jax.random.normal(jax.random.key(1), (2, 5, 11))
    assert float(distill_kl(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-6)
    p = jax.nn.softmax(logits[0, 0])
    q_logits = logits.at[0, 0].set(0.0)  # student uniform at one position
    expected = float(jnp.sum(p * (jnp.log(p) - jnp.log(1 / 11)))) / 10  # mean over 10 positions, T=1
    assert float(distill_kl(q_logits, logits, 1.0)) == pytest.approx(expected, rel=1e-5)
    # alpha mixes KL into the objective; the reported cross-entropy is unchanged
    params = _params0()
    teacher = state_lib.random_params(CFG, jax.random.key(1))
    batch = _batch(0, 1, 2)
    plain = jax.jit(make_loss(CFG, TrainConfig()))(params, batch["inputs"][0], batch["targets"][0], None)
    mixed = jax.jit(make_loss(CFG, TrainConfig(distill_alpha=0.5, distill_temperature=2.0), CFG))(
        params, batch["inputs"][0], batch["targets"][0], teacher
    )
    assert float(plain[1]) == pytest.approx(float(mixed[1]), rel=1e-6)
    assert float(mixed[0]) != pytest.approx(float(plain[0]), rel=1e-3)


@pytest.mark.parametrize("floor", [None, 0.6])
def test_objective_extra_leaves_train_with_their_own_optimizer_and_projection(floor):
    # the objective scales the cross-entropy by an extra leaf s; SGD(0.1) on s sees d(s*ce)/ds = ce unclipped
    # (clip_norm 1e-6 applies to the weights' gradients only), the projection max(s, floor) runs after it
    tcfg = TrainConfig(seq_len=16, global_batch=8, clip_norm=1e-6, peak_lr=1e-2)
    ce_of = make_loss(CFG, tcfg)

    def loss(params, extra, inputs, targets, step):
        ce = ce_of(params, inputs, targets, None)[1]
        return extra["scale"]["s"] * ce, ce, {"s": extra["scale"]["s"]}

    project = (lambda e: e) if floor is None else (lambda e: {"scale": {"s": jnp.maximum(e["scale"]["s"], floor)}})
    opt = optim.with_extra(optim.optimizer(tcfg, TOTAL), {"scale": optax.sgd(0.1)})
    masks = _random_masks(_params0())
    extra = {"scale": {"s": np.float32(1.0)}}
    mesh = sharding.make_mesh(data=-1)
    state = state_lib.place_state(mesh, state_lib.init_state(_params0(), masks, opt, 0, extra=extra))
    step = make_train_step(CFG, tcfg, opt, TOTAL, objective=Objective(loss=loss, project=project))
    new, metrics = state_lib.jit_train_step(step, mesh, state)(state, state_lib.global_batch(mesh, _batch(1, 1, 8)))
    s = float(new["extra"]["scale"]["s"])
    assert float(metrics["s"]) == 1.0 and float(metrics["loss"]) == pytest.approx(float(metrics["ce"]), rel=1e-6)
    assert s == (pytest.approx(1 - 0.1 * float(metrics["ce"]), rel=1e-5) if floor is None else np.float32(floor))
    params = jax.device_get(new["params"])
    for path, m in leaf_paths(masks):  # the masks still hold on the weights
        assert np.all(np.asarray(_get(params, path))[~m] == 0), "/".join(path)
