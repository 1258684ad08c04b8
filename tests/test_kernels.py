"""The accelerator programs, run on CPU: every attention implementation (`cpu`, `xla`, and the TPU's
splash kernel in Pallas interpret mode) through the model, HF parity, gradients, a masked train step,
calibration statistics and Sheared's gated forward; the choice made from the devices a program is
traced for; the TPU train step exported for `platforms=("tpu",)` with its splash custom calls.

Splash tiles sequences in blocks of 128, so these run at 128 positions. Float32 tolerance: 1e-5
absolute for single layers, 1e-4 relative to the largest logit for whole models."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractDevice, AbstractMesh

from prunejax import calibrate, model, sharding
from prunejax.config import TINY
from prunejax.kernels import attention, splash
from prunejax.prune import sheared_gates as sg
from prunejax.prune.sheared_model import masked_forward
from prunejax.train import optim
from prunejax.train import state as state_lib
from prunejax.train.config import TrainConfig
from prunejax.train.step import make_train_step
from prunejax.tree import leaf_paths

IMPLS = ("cpu", "xla", "splash")
CFG = TINY.replace(num_hidden_layers=2)  # GQA: 4 query heads over 2 kv heads
LENGTH = 128


def _abstract_mesh(platform: str, sizes: tuple[int, int, int] = (1, 1, 1)) -> AbstractMesh:
    device = AbstractDevice(device_kind=f"{platform} device", num_cores=None, platform=platform)
    return AbstractMesh(sizes, sharding.MESH_AXES, abstract_device=device)


@pytest.fixture(scope="module")
def params():
    return model.init_params(CFG, jax.random.key(0))


def tokens(b: int = 2, length: int = LENGTH, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.RandomState(seed).randint(0, CFG.vocab_size, (b, length)), jnp.int32)


def _close_trees(got, want, atol):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol)


# ---- the kernel against the reference ------------------------------------------------------------
@pytest.mark.parametrize("kv,groups", [(2, 2), (1, 4), (4, 1)], ids=["gqa", "mqa", "mha"])
def test_splash_kernel_equals_the_reference_forward_and_backward(kv, groups):
    rng = np.random.RandomState(0)
    b, h = 2, 16
    q = jnp.asarray(rng.randn(b, LENGTH, kv, groups, h), jnp.float32)
    k, v = (jnp.asarray(rng.randn(b, LENGTH, kv, h), jnp.float32) for _ in range(2))
    cot = jnp.asarray(rng.randn(*q.shape), jnp.float32)

    def value_and_grads(fn):
        out, pull = jax.vjp(fn, q, k, v)
        return (out, *pull(cot))

    got = value_and_grads(lambda q, k, v: splash.attention(q, k, v, interpret=True))
    want = value_and_grads(lambda q, k, v: attention.causal_attention(q, k, v, "xla", None))
    _close_trees(got, want, 1e-5)
    # and the reference is causal attention, not both sides wrong the same way: the first query sees key 0 only
    np.testing.assert_allclose(got[0][:, 0], jnp.broadcast_to(v[:, 0, :, None], got[0][:, 0].shape), atol=1e-6)


# ---- the model with each implementation ----------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_forward_and_gradients_equal_the_reference(params, impl):
    t, targets = tokens(), tokens(seed=1)
    ref = model.forward(CFG, params, t, attention="xla", attn_block=None)
    got = model.forward(CFG, params, t, attention=impl, attn_block=32)
    assert np.abs(np.asarray(got - ref)).max() <= 1e-4 * np.abs(np.asarray(ref)).max()

    def loss(p, impl, block):
        return jnp.mean(model.token_nll(CFG, p, t, targets, attention=impl, attn_block=block, chunk=32, remat=True))

    _close_trees(jax.grad(loss)(params, impl, 32), jax.grad(loss)(params, "xla", None), 1e-6)
    # a stacked train state's params (`model.stack_layers`) give the same model and the same gradients
    stacked = model.stack_layers(params)
    got = model.forward(CFG, stacked, t, attention=impl, attn_block=32)
    assert np.abs(np.asarray(got - ref)).max() <= 1e-4 * np.abs(np.asarray(ref)).max()
    grads = model.unstack_layers(jax.grad(loss)(stacked, impl, 32))
    _close_trees(grads, jax.grad(loss)(params, "xla", None), 1e-6)


def test_layers_scan_on_accelerators_and_unroll_under_the_cpu_lowering(params):
    """The accelerator implementations run the decoder layers as one scan over stacked weights (one
    layer body); the CPU lowering keeps the unrolled loop."""
    t = tokens()
    for impl, scans in (("xla", True), ("splash", True), ("cpu", False)):
        jaxpr = str(jax.make_jaxpr(lambda p, impl=impl: model.forward(CFG, p, t, attention=impl))(params))
        assert ("scan[" in jaxpr) == scans, impl
        pallas = jaxpr.count("pallas_call")
        assert pallas == (1 if impl == "splash" else 0), (impl, pallas)  # once: inside the scanned layer body


def test_logit_parity_with_transformers_for_every_implementation(make_hf_model):
    import torch

    from prunejax import hf

    path, ref_model = make_hf_model()  # GQA 6/2, untied, head_dim 8
    cfg, p = hf.load(path)
    toks = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, LENGTH))
    with torch.no_grad():
        ref = ref_model(torch.tensor(toks)).logits.float().numpy()
    for impl in IMPLS:
        ours = np.asarray(model.forward(cfg, p, jnp.asarray(toks), attention=impl))
        assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max(), impl


@pytest.mark.parametrize("impl", ["xla", "splash"])
def test_a_masked_train_step_on_the_mesh_equals_the_cpu_lowering(params, impl):
    """One AdamW step with masks, on 8 devices (data 2, fsdp 2, tp 2: splash's shard_map splits the batch
    and the kv heads), gives the CPU lowering's update, and every masked weight stays exactly zero."""
    p = jax.device_get(params)
    rng = np.random.default_rng(3)
    masks = {
        "layers": {
            k: {"mlp": {"up_proj": rng.random(lp["mlp"]["up_proj"].shape) < 0.5}} for k, lp in p["layers"].items()
        }
    }
    windows = rng.integers(0, CFG.vocab_size, (1, 8, LENGTH + 1)).astype(np.int32)
    batch = {"inputs": windows[..., :-1], "targets": windows[..., 1:]}

    def one_step(impl, mesh_sizes):
        tcfg = TrainConfig(seq_len=LENGTH, global_batch=8, compute_dtype="float32", remat=True, attention=impl)
        mesh = sharding.make_mesh(*mesh_sizes)
        opt = optim.optimizer(tcfg, 10)
        stacked = state_lib.scans_layers(CFG, masks, impl, mesh)  # as `train` decides
        assert stacked == (impl != "cpu")  # the scanning implementations train a stacked state
        st = state_lib.place_state(mesh, state_lib.init_state(p, masks, opt, 0, stacked=stacked))
        assert state_lib.is_stacked(st) == stacked and model.is_stacked(st["masks"]) == stacked
        fn = state_lib.jit_train_step(make_train_step(CFG, tcfg, opt, 10), mesh, st)
        with jax.set_mesh(mesh):
            new, metrics = fn(st, state_lib.global_batch(mesh, batch))
        new = state_lib.per_layer(mesh, new)  # the layout checkpoints and MODEL_DIRs hold
        return jax.device_get(new["params"]), float(metrics["loss"])

    want, want_loss = one_step("cpu", (-1, 1, 1))
    got, got_loss = one_step(impl, (2, 2, 2))
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    # Adam divides by the gradient's own scale, so a 1e-7 relative difference in a near-zero gradient
    # (8 devices sum in another order) moves its weight by up to ~lr * 1e-2: compare at 1e-5 (lr 3e-4)
    _close_trees(got, want, 1e-5)
    for path, m in leaf_paths(masks):
        w = got
        for key in path:
            w = w[key]
        assert np.all(np.asarray(w)[~m] == 0), path


@pytest.mark.parametrize("impl", ["xla", "splash"])
def test_calibration_statistics_equal_the_cpu_lowering(params, impl):
    lp = params["layers"]["0"]
    x = jax.random.normal(jax.random.key(1), (8, LENGTH, CFG.hidden_size), jnp.float32)
    stats = ("act", "cosine", "hessian", "sq_norm")
    mesh = sharding.make_mesh(2, 2, 2)
    want_y, want = calibrate.layer_statistics(CFG, lp, x, stats, attention="cpu")
    got_y, got = calibrate.layer_statistics(CFG, lp, calibrate._place(x, mesh), stats, mesh, attention=impl)
    np.testing.assert_allclose(np.asarray(got_y), np.asarray(want_y), atol=1e-5)
    for (path, a), (_, b) in zip(leaf_paths(got), leaf_paths(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4, err_msg=str(path))


@pytest.mark.parametrize("impl", ["xla", "splash"])
def test_sheareds_gated_forward_equals_the_cpu_lowering(params, impl):
    shapes = sg.gate_shapes(CFG).items()
    log_alpha = {g: 2.0 * jax.random.normal(jax.random.key(i), s) for i, (g, s) in enumerate(shapes)}
    z = sg.sample_gates(log_alpha, jax.random.key(3))
    t = tokens()
    want = masked_forward(CFG, params, z, t, attention="cpu")
    got = masked_forward(CFG, params, z, t, attention=impl, remat=True)
    assert np.abs(np.asarray(got - want)).max() <= 1e-4 * np.abs(np.asarray(want)).max()


# ---- the choice ----------------------------------------------------------------------------------
def test_auto_follows_the_platform_of_the_devices_traced_for():
    assert attention.lowering("auto") == "cpu"  # this suite's devices
    for platform, impl in (("tpu", "splash"), ("gpu", "cudnn"), ("cpu", "cpu")):
        with jax.sharding.use_abstract_mesh(_abstract_mesh(platform)):
            assert attention.lowering("auto") == impl
            assert attention.lowering("xla") == "xla"  # a name overrides the platform's choice
    from prunejax.train.step import compute_dtype

    assert compute_dtype(TrainConfig()) == jnp.float32  # compute_dtype auto, like attention, by the platform
    with jax.sharding.use_abstract_mesh(_abstract_mesh("tpu")):
        assert compute_dtype(TrainConfig()) == jnp.bfloat16
    with pytest.raises(ValueError, match="attention 'flash': expected one of auto, xla, splash, cudnn, cpu"):
        attention.lowering("flash")
    with pytest.raises(Exception, match="attention must be one of"):
        TrainConfig(attention="flash")


def test_cudnn_serves_half_precision_and_otherwise_auto_falls_back_to_xla():
    q = jnp.zeros((1, LENGTH, 2, 2, 16), jnp.float32)
    k = jnp.zeros((1, LENGTH, 2, 16), jnp.float32)
    assert not attention.cudnn_serves(q, k) and attention.cudnn_serves(q.astype(jnp.bfloat16), k)
    with jax.sharding.use_abstract_mesh(_abstract_mesh("gpu")):
        jaxpr = str(jax.make_jaxpr(lambda q, k: attention.causal_attention(q, k, k, "auto"))(q, k))
        assert "dot_general" in jaxpr and "cudnn" not in jaxpr  # float32: the XLA reference
        with pytest.raises(ValueError, match="attention 'cudnn' serves bf16/fp16"):
            attention.causal_attention(q, k, k, "cudnn")


def test_the_tpu_train_step_exports_with_the_splash_kernels():
    """Traced for a TPU (an abstract mesh of TPU devices) and exported for platforms=("tpu",) without
    libtpu: `auto` picks splash, compiled (not interpreted), its forward, dq and dkv kernels inside the
    scan over layers; the projections are tensordots, not the CPU lowering's custom calls. The state is
    stacked, as `train` gives a scanning step: the weights arrive as one [n_layers, ...] array per kind."""
    tcfg = TrainConfig(seq_len=LENGTH, global_batch=2, compute_dtype="bfloat16", remat=True)
    opt = optim.optimizer(tcfg, 10)
    st = jax.eval_shape(lambda p: state_lib.init_state(p, None, opt, 0, stacked=True), state_lib.param_shapes(CFG))
    batch = {k: jax.ShapeDtypeStruct((1, 2, LENGTH), jnp.int32) for k in ("inputs", "targets")}
    with jax.sharding.use_abstract_mesh(_abstract_mesh("tpu")):
        exported = jax.export.export(jax.jit(make_train_step(CFG, tcfg, opt, 10)), platforms=("tpu",))(st, batch)
    text = exported.mlir_module()
    kernels = set(re.findall(r'kernel_name = "([^"]+)"', text))
    assert {k.split("_")[2] for k in kernels} == {"fwd", "dq", "dkv"}, kernels
    assert all(k.startswith("splash_mha_") for k in kernels)
    assert "stablehlo.while" in text and "prunejax_sgemm" not in text
    shapes = [a.shape for a in exported.in_avals]
    q = (CFG.num_hidden_layers, CFG.hidden_size, CFG.num_attention_heads, CFG.head_dim)
    assert shapes.count(q) == 3 and shapes.count(q[1:]) == 0  # weights and two moments, stacked


def test_splash_splits_batch_and_heads_only_where_they_divide():
    from prunejax.kernels import splash

    mesh = jax.sharding.AbstractMesh((2, 2, 2), ("data", "fsdp", "tp"))
    assert splash.local_work(mesh, 8, 32, 8) == (2, 16)  # batch over data x fsdp, heads over tp
    assert splash.local_work(mesh, 8, 24, 3) == (2, 24)  # 3 kv heads do not divide over tp: all heads local
    assert splash.local_work(mesh, 6, 32, 8) == (6, 16)  # 6 sequences do not divide over 4: all local
    assert splash.split(mesh, 6, 3) == (None, None)
