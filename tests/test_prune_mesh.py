"""Pruning on a device mesh: calibration batches split over 8 fake devices choose exactly what one
device chooses (masks and removed layers equal; scores within the 1e-5 float32 policy)."""

import jax
import numpy as np
import pytest

from prunejax import calibrate
from prunejax.config import TINY
from prunejax.model import init_params
from prunejax.prune import prune
from prunejax.sharding import make_mesh

CFG = TINY  # 4 layers
MESH = make_mesh(data=2, fsdp=2, tp=2)  # batch rows split 4 ways, replicated over tp


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(5))


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(5).integers(0, CFG.vocab_size, (8, 16)).astype(np.int32)


@pytest.fixture
def splits(monkeypatch):
    """How many ways each calibration batch was split across devices (1 = on one device)."""
    seen = []
    place = calibrate._place

    def spy(x, mesh):
        out = place(x, mesh)
        seen.append(out.shape[0] // out.sharding.shard_shape(out.shape)[0])
        return out

    monkeypatch.setattr(calibrate, "_place", spy)
    return seen


def both(params, tokens, splits, method, **options):
    """(result on one device, result on MESH), checking that the mesh really split every batch."""
    one = prune(CFG, params, method, tokens, batch_size=4, **options)
    assert set(splits) == {1}
    splits.clear()
    meshed = prune(CFG, params, method, tokens, batch_size=4, mesh=MESH, **options)
    assert splits and set(splits) == {4}
    return one, meshed


def test_wanda_masks_equal_on_a_mesh(params, tokens, splits):
    one, meshed = both(params, tokens, splits, "wanda", ratio=0.5)
    jax.tree.map(np.testing.assert_array_equal, meshed.masks, one.masks)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), meshed.params, one.params)
    assert meshed.report["realized_ratio"] == one.report["realized_ratio"] == 0.5


def test_minitron_depth_choice_equal_on_a_mesh(params, tokens, splits):
    one, meshed = both(params, tokens, splits, "minitron-depth", ratio=0.5)
    assert meshed.report["removed_layers"] == one.report["removed_layers"]
    assert meshed.cfg == one.cfg
    np.testing.assert_allclose(meshed.report["dense_loss"], one.report["dense_loss"], rtol=1e-5)
    for start, loss in one.report["block_losses"].items():
        np.testing.assert_allclose(meshed.report["block_losses"][start], loss, rtol=1e-5)


def test_shortgpt_choice_equal_on_a_mesh(params, tokens, splits):
    one, meshed = both(params, tokens, splits, "shortgpt", ratio=0.5)
    assert meshed.report["removed_layers"] == one.report["removed_layers"]
    for layer, bi in one.report["block_influence"].items():
        np.testing.assert_allclose(meshed.report["block_influence"][layer], bi, rtol=1e-5, atol=1e-6)
