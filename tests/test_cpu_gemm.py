"""MKL's sgemm behind an XLA custom call (prunejax.cpu_gemm): the product, its transposes, the shapes
BLAS treats specially, where `project` takes it, and what happens when it cannot load.

It needs MKL (the `cpu` extra) and the built handler (`prunejax cpu-gemm build`), which
`make setup-test` installs and builds; `make test` sets PRUNEJAX_REQUIRE_CPU_GEMM=1, so there a
missing handler fails these tests instead of skipping them."""

from __future__ import annotations

import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prunejax import config, model
from prunejax.kernels import cpu_gemm
from prunejax.train.config import TrainConfig
from prunejax.train.step import make_loss


def _require() -> None:
    ok, why = cpu_gemm._load()
    if not ok:
        if os.environ.get("PRUNEJAX_REQUIRE_CPU_GEMM") == "1":
            pytest.fail(f"PRUNEJAX_REQUIRE_CPU_GEMM=1 but {why}")
        pytest.skip(why)


@pytest.fixture
def gemm(monkeypatch):
    """The custom call, on for any size even with the suite's 8 fake devices."""
    _require()
    monkeypatch.setattr(cpu_gemm, "ENABLED", True)
    monkeypatch.setattr(cpu_gemm, "MIN_FLOPS", 0)
    return cpu_gemm


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_matches_float64_product(gemm, trans_a, trans_b):
    m, k, n = 37, 300, 513  # no dimension a multiple of a SIMD width
    a = _rand(k, m) if trans_a else _rand(m, k)
    b = _rand(n, k, seed=1) if trans_b else _rand(k, n, seed=1)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    got = jax.jit(gemm.matmul, static_argnums=(2, 3))(jnp.asarray(a), jnp.asarray(b), trans_a, trans_b)
    assert got.shape == (m, n) and got.dtype == jnp.float32
    # float32 rounding of a 300-term sum of N(0, 1) products: ~sqrt(300) * 2^-24 * |terms|
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=2e-4)


def test_matmul_is_deterministic(gemm):
    a, b = jnp.asarray(_rand(512, 640)), jnp.asarray(_rand(640, 384, seed=1))
    fn = jax.jit(gemm.matmul)
    first = np.asarray(fn(a, b))
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(fn(a, b)), first)


def test_matmul_empty_shapes(gemm):
    zero_k = gemm.matmul(jnp.ones((4, 0)), jnp.ones((0, 3)))
    np.testing.assert_array_equal(np.asarray(zero_k), np.zeros((4, 3), np.float32))
    assert gemm.matmul(jnp.ones((0, 5)), jnp.ones((5, 3))).shape == (0, 3)
    assert gemm.matmul(jnp.ones((4, 5)), jnp.ones((5, 0))).shape == (4, 0)


def test_matmul_under_vmap(gemm):
    a, b = _rand(3, 40, 50), _rand(50, 60, seed=1)
    got = jax.vmap(gemm.matmul, in_axes=(0, None))(jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(got), a @ b, rtol=1e-5, atol=1e-4)


def _project_loss(x, w):
    return jnp.sum(jnp.sin(model.project(x, w, 2)))


def test_project_takes_it_and_matches_xla(gemm, monkeypatch):
    """Values and both gradients of a [B, L, N, H] x [N, H, D] projection (o_proj's shape): the custom
    call in the forward and in both backward products, against XLA's dot."""
    x, w = jnp.asarray(_rand(2, 24, 4, 16)), jnp.asarray(_rand(4, 16, 48, seed=1) * 0.1)

    def traced():  # a fresh jit each time: the choice is made when it traces
        return jax.jit(jax.value_and_grad(_project_loss, argnums=(0, 1)))

    assert traced().lower(x, w).as_text().count(cpu_gemm.TARGET) == 3  # forward, dx, dw
    got = traced()(x, w)
    monkeypatch.setattr(cpu_gemm, "ENABLED", False)
    assert cpu_gemm.TARGET not in traced().lower(x, w).as_text()
    want = traced()(x, w)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-5)


def test_small_and_bfloat16_products_take_xla(gemm, monkeypatch):
    x, w = jnp.ones((8, 16)), jnp.ones((16, 8))

    def hlo(x):
        return jax.jit(lambda x, w: model.project(x, w, 1)).lower(x, w).as_text()

    assert cpu_gemm.TARGET not in hlo(x.astype(jnp.bfloat16))
    monkeypatch.setattr(cpu_gemm, "MIN_FLOPS", 2 * 8 * 16 * 8 + 1)
    assert cpu_gemm.TARGET not in hlo(x)
    monkeypatch.setattr(cpu_gemm, "MIN_FLOPS", 2 * 8 * 16 * 8)
    assert cpu_gemm.TARGET in hlo(x)


def test_default_is_off_with_several_devices(monkeypatch):
    assert jax.device_count() > 1  # the suite's fake devices
    monkeypatch.setattr(cpu_gemm, "ENABLED", None)
    monkeypatch.setattr(cpu_gemm, "MIN_FLOPS", 0)
    assert not cpu_gemm.usable(512, 512, 512, jnp.float32, jnp.float32)


@pytest.fixture
def reload(monkeypatch):
    """`_load` run afresh under the test's environment, and cached again as it was afterwards."""
    cpu_gemm._load.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    cpu_gemm._load.cache_clear()


def test_env_turns_it_off_or_is_refused(reload):
    reload.setenv("PRUNEJAX_CPU_GEMM", "xla")
    assert cpu_gemm._load() == (False, "XLA's dot (PRUNEJAX_CPU_GEMM=xla)")
    cpu_gemm._load.cache_clear()
    reload.setenv("PRUNEJAX_CPU_GEMM", "fast")
    with pytest.raises(cpu_gemm.CpuGemmError, match="PRUNEJAX_CPU_GEMM='fast'"):
        cpu_gemm._load()


def test_missing_library_falls_back_or_fails_when_required(reload, tmp_path):
    reload.setattr(cpu_gemm, "LIBRARY", tmp_path / "_sgemm.so")
    if cpu_gemm._find_mkl() is None:
        pytest.skip("MKL is not installed")
    ok, why = cpu_gemm._load()
    assert not ok and "_sgemm.so is not built" in why
    cpu_gemm._load.cache_clear()
    reload.setenv("PRUNEJAX_CPU_GEMM", "mkl")
    with pytest.raises(cpu_gemm.CpuGemmError, match="not built"):
        cpu_gemm._load()


def test_library_built_from_other_source_is_refused(reload, tmp_path):
    if shutil.which(os.environ.get("CXX", "c++")) is None or cpu_gemm._find_mkl() is None:
        pytest.skip("no C++ compiler or no MKL")
    current, old = cpu_gemm.SOURCE, tmp_path / "sgemm.cc"
    old.write_text(current.read_text() + "\n// an older version\n")
    reload.setattr(cpu_gemm, "SOURCE", old)
    built = cpu_gemm.build(tmp_path / "_sgemm.so")
    assert set(tmp_path.iterdir()) == {old, built}  # no temporary file left
    reload.setattr(cpu_gemm, "SOURCE", current)
    reload.setattr(cpu_gemm, "LIBRARY", built)
    ok, why = cpu_gemm._load()
    assert not ok and "another version of sgemm.cc" in why


def test_build_without_compiler_names_it(tmp_path):
    with pytest.raises(cpu_gemm.CpuGemmError, match=re.escape("no C++ compiler '/nonexistent/c++'")):
        cpu_gemm.build(tmp_path / "_sgemm.so", compiler="/nonexistent/c++")
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone


def test_a_compiler_that_writes_nothing_leaves_the_working_library(tmp_path):
    """CXX=/bin/true exits 0 and writes no library: the build fails and `out` keeps its old bytes."""
    out = tmp_path / "_sgemm.so"
    out.write_bytes(b"the working library")
    with pytest.raises(cpu_gemm.CpuGemmError, match="not a usable library.*is unchanged"):
        cpu_gemm.build(out, compiler=shutil.which("true") or "/bin/true")
    assert out.read_bytes() == b"the working library" and list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize(("preset", "batch", "seq", "calls"), [("tiny", 16, 128, 0), ("tiny", 8, 256, 0)])
def test_tiny_study_shapes_stay_on_xla(monkeypatch, preset, batch, seq, calls):
    """The tiny study's train and eval steps (its parent is the tiny preset with 6 layers) trace no
    custom call at the default threshold: what they compute is what they computed before it existed."""
    _require()
    monkeypatch.setattr(cpu_gemm, "ENABLED", True)
    cfg = config.preset(preset)
    params = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
    toks = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    loss = make_loss(cfg, TrainConfig())
    grad = jax.jit(jax.grad(lambda p, i, t: loss(p, i, t, None)[0]))
    assert grad.lower(params, toks, toks).as_text().count(cpu_gemm.TARGET) == calls
    logits = jax.jit(lambda p, t: model.forward(cfg, p, t))
    assert logits.lower(params, toks).as_text().count(cpu_gemm.TARGET) == calls


def test_smollm2_step_takes_it(monkeypatch):
    """SmolLM2-135M's step at 4 x 256: every projection but k/v (2.3e8 flops) and both backward
    products of each, the LM head included, take the custom call."""
    _require()
    monkeypatch.setattr(cpu_gemm, "ENABLED", True)
    cfg = config.preset("smollm2-135m")
    params = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
    toks = jax.ShapeDtypeStruct((4, 256), jnp.int32)
    loss = make_loss(cfg, TrainConfig())
    hlo = jax.jit(jax.grad(lambda p, i, t: loss(p, i, t, None)[0])).lower(params, toks, toks).as_text()
    per_layer = 5  # q, o, gate, up, down
    assert hlo.count(cpu_gemm.TARGET) == 3 * (per_layer * cfg.num_hidden_layers + 1)


@pytest.mark.parametrize(
    "vendor,mode,used", [("AuthenticAMD", "auto", False), ("GenuineIntel", "auto", True), ("AuthenticAMD", "mkl", True)]
)
def test_auto_uses_the_custom_call_where_it_pays_by_cpu_vendor(monkeypatch, vendor, mode, used):
    """On AMD CPUs XLA's dot measured faster: `auto` keeps it there, and says why; `mkl` forces the call."""
    _require()
    monkeypatch.setattr(cpu_gemm, "cpu_vendor", lambda: vendor)
    monkeypatch.setenv("PRUNEJAX_CPU_GEMM", mode)
    monkeypatch.setattr(cpu_gemm, "ENABLED", None)
    monkeypatch.setattr(cpu_gemm, "MIN_FLOPS", 0)
    monkeypatch.setattr(cpu_gemm.jax, "device_count", lambda: 1)  # a single-device process, as verbs run
    cpu_gemm._pays.cache_clear()
    try:
        assert cpu_gemm.usable(512, 512, 512, jnp.float32, jnp.float32) == used
        assert ("on AMD CPUs" in cpu_gemm.status()) == (not used)
    finally:
        cpu_gemm._pays.cache_clear()


def test_a_corrupt_library_is_reported_not_a_crash(tmp_path, monkeypatch):
    """An existing _sgemm.so that is not a loadable handler (an empty file from a broken build) makes
    `status` say why and fall back to XLA's dot; `PRUNEJAX_CPU_GEMM=mkl` makes it an error."""
    if cpu_gemm._find_mkl() is None:
        pytest.skip("MKL is not installed")
    broken = tmp_path / "_sgemm.so"
    broken.write_bytes(b"")
    monkeypatch.setattr(cpu_gemm, "LIBRARY", broken)
    monkeypatch.delenv("PRUNEJAX_CPU_GEMM", raising=False)
    cpu_gemm._load.cache_clear()
    try:
        ok, why = cpu_gemm._load()
        assert not ok and "is not a usable library" in why and str(broken) in why
        cpu_gemm._load.cache_clear()
        monkeypatch.setenv("PRUNEJAX_CPU_GEMM", "mkl")
        with pytest.raises(cpu_gemm.CpuGemmError, match="is not a usable library"):
            cpu_gemm._load()
    finally:
        cpu_gemm._load.cache_clear()
