"""Pruning on a device mesh: calibration batches split over 8 fake devices choose exactly what one
device chooses (masks and removed layers equal; scores within the 1e-5 float32 policy)."""

import jax
import numpy as np
import pytest

from prunejax import calibrate
from prunejax.config import TINY
from prunejax.prune.registry import prune
from prunejax.sharding import make_mesh

CFG = TINY  # 4 layers
MESH = make_mesh(data=2, fsdp=2, tp=2)  # batch rows split 4 ways, replicated over tp


SEED, TOKENS_SHAPE = 5, (8, 16)  # conftest's `params` and `tokens` fixtures


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


WEIGHTS_MESH = make_mesh(data=1, fsdp=4, tp=2)  # each layer's weights split 8 ways, the batch 4 ways


@pytest.fixture
def placed(monkeypatch):
    """The shardings of every weight calibration placed on the mesh."""
    seen = []
    place = calibrate.place_weights

    def spy(tree, mesh):
        out = place(tree, mesh)
        seen.extend(x.sharding for x in jax.tree.leaves(out) if mesh is not None)
        return out

    monkeypatch.setattr(calibrate, "place_weights", spy)
    return seen


def test_statistics_with_sharded_weights_equal_replicated_within_1e_6(params, tokens, placed):
    stats = ("act", "cosine", "hessian", "sq_norm")
    _, one = calibrate.sequential(CFG, params, tokens, stats, batch_size=4)
    _, sharded = calibrate.sequential(CFG, params, tokens, stats, batch_size=4, mesh=WEIGHTS_MESH)
    # the q/k/v/gate/up kernels ([embed, ...]) are split over fsdp x tp: 8 ways, no full copy anywhere
    kernels = [s for s in placed if tuple(s.spec) == ("fsdp", "tp")]  # gate/up: [embed, mlp]
    assert kernels and all(len(s.device_set) == 8 and s.shard_shape((64, 176)) == (16, 88) for s in kernels)
    for layer in one:
        for path, a in jax.tree_util.tree_leaves_with_path(one[layer]):
            b = sharded[layer]
            for k in path:
                b = b[k.key]
            scale = max(float(np.max(np.abs(a))), 1e-30)
            assert float(np.max(np.abs(np.asarray(b) - a))) <= 1e-6 * scale, (layer, path)


@pytest.mark.parametrize(
    "method, options",
    [("wanda", {"ratio": 0.5}), ("sparsegpt", {"ratio": 0.5}), ("sparsegpt", {"ratio": 0.5, "pattern": (2, 4)}),
     ("minitron-width", {"ratio": 0.5}), ("minitron-depth", {"ratio": 0.5}), ("shortgpt", {"ratio": 0.5})],
)  # fmt: skip
def test_sharded_weights_choose_what_replicated_weights_choose(params, tokens, placed, method, options):
    one = prune(CFG, params, method, tokens, batch_size=4, **options)
    sharded = prune(CFG, params, method, tokens, batch_size=4, mesh=WEIGHTS_MESH, **options)
    assert placed and not all(s.is_fully_replicated for s in placed)
    assert sharded.cfg == one.cfg
    jax.tree.map(np.testing.assert_array_equal, sharded.masks, one.masks)
    assert sharded.report.get("removed_layers") == one.report.get("removed_layers")

    def close(a, b):  # the whole-module policy: 1e-4 of the largest weight. SparseGPT's updates go through
        # H^-1, which amplifies the 1e-7 differences of H summed in another order (the statistics test above)
        assert float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) <= 1e-4 * float(np.max(np.abs(b)))

    jax.tree.map(close, sharded.params, one.params)
