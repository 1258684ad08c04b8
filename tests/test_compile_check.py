"""compile-check: the real steps compile on the 8 fake CPU devices here; TPU topologies need libtpu."""

import jax
import pytest

from prunejax import compile_check
from prunejax.config import TINY, ConfigError
from prunejax.train import config as train_config

TCFG = train_config.load("configs/train/tiny.yaml", ["global_batch=8", "seq_len=32"])


def test_train_step_compiles_and_reports_memory():
    fit = compile_check.check_train(TINY, TCFG, jax.devices(), hbm=2**30)
    params_bytes = TINY.num_params() * 4
    # params + two AdamW moments, sharded over 8 devices, are part of the arguments of one device
    assert fit.breakdown["arguments"] >= 3 * params_bytes / 8
    assert fit.fits and fit.flops > 0
    assert "fits" in fit.line()


def test_calibration_step_compiles_the_placement_that_runs():
    fit = compile_check.check_calibration(TINY, 8, 32, jax.devices(), hbm=2**30)
    assert fit.per_chip_bytes > 0 and fit.flops > 0 and "8 x 32" in fit.name and "over batch" in fit.name
    small = compile_check.check_calibration(TINY, 2, 32, jax.devices(), hbm=2**30)  # not rounded up to 8
    assert "2 x 32" in small.name and "over sequence" in small.name
    # the activations of 2 x 32 tokens split 8 ways: each chip holds 8 tokens' worth, not 32 or 64
    assert small.breakdown["arguments"] < fit.breakdown["arguments"]
    sharded = compile_check.check_calibration(TINY, 8, 32, jax.devices(), hbm=2**30, mesh_spec="fsdp=4,tp=2")
    assert "'fsdp': 4, 'tp': 2" in sharded.name  # weights split 8 ways: a smaller share of them per chip
    assert sharded.breakdown["arguments"] < fit.breakdown["arguments"]


def test_sparsegpt_solve_compiles_with_rows_split_over_the_chips():
    fits = {f.name: f for f in compile_check.check_sparsegpt(TINY, jax.devices(), hbm=2**30)}
    d, f = TINY.hidden_size, TINY.intermediate_size
    assert f"SparseGPT block (W {f} x {d}, mesh {{'data': 8, 'fsdp': 1, 'tp': 1}})" in fits
    update = fits[f"SparseGPT lazy update (W {d} x {f}, mesh {{'data': 8, 'fsdp': 1, 'tp': 1}})"]  # down_proj
    w_bytes, u_bytes = d * f * 4, f * f * 4
    # each chip holds an eighth of W's rows and the whole of U (plus two [O/8, 128] blocks)
    assert w_bytes / 8 + u_bytes <= update.breakdown["arguments"] < w_bytes / 2 + u_bytes
    assert update.breakdown["aliased"] < 0  # W's buffer is reused (donated), not copied
    assert all(fit.fits and fit.per_chip_bytes > 0 for fit in fits.values())


def test_too_small_memory_is_reported():
    fit = compile_check.check_train(TINY, TCFG, jax.devices(), hbm=1024)
    assert not fit.fits and "DOES NOT FIT" in fit.line()


def test_unknown_topology():
    with pytest.raises(ValueError, match="unknown topology 'v9-8'; known: v4-8"):
        compile_check.topology_devices("v9-8")


def test_tpu_topology_when_libtpu_is_installed():
    try:
        devices, hbm = compile_check.topology_devices("v4-8")
    except RuntimeError as e:
        pytest.skip(f"libtpu not installed: {e}")
    assert len(devices) == 4 and hbm == 32 * 2**30


def test_a_micro_batch_that_does_not_split_over_the_chips_is_refused_as_train_refuses_it():
    tcfg = train_config.load("configs/train/tiny.yaml", ["global_batch=8", "seq_len=32", "grad_accum=2"])
    with pytest.raises(ConfigError, match=r"micro-batch 4 \(global_batch / grad_accum\) does not divide over 8"):
        compile_check.check_train(TINY, tcfg, jax.devices(), hbm=2**30)


@pytest.mark.parametrize("attention", ["xla", "cpu"])
def test_train_step_counts_its_executed_flops_over_every_layer(attention):
    """The scanned (xla) and the unrolled (cpu) programs both execute at least the model's FLOPs,
    counted loop-aware over the optimized HLO: XLA's own cost analysis counts the scanned layer once."""
    import dataclasses

    tcfg = dataclasses.replace(TCFG, attention=attention)
    fit = compile_check.check_train(TINY, tcfg, jax.devices(), hbm=2**30)
    assert fit.model_flops == compile_check.model_flops_per_step(TINY, 8 * 32, 32) / 8
    assert fit.model_flops <= fit.flops < 4 * fit.model_flops, (fit.flops, fit.model_flops)
    assert f"attention {attention}" in fit.name and fit.compile_s > 0 and fit.host_rss_bytes > 0
