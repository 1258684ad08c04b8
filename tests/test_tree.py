"""prunejax.tree on literal trees: paths, masking and the one sparsity count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prunejax import tree

W = {
    "layers": {
        0: {"mlp": {"up_proj": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)}},
        1: {"mlp": {"up_proj": np.array([[5.0, 0.0], [7.0, 8.0]], np.float32)}},
    },
    "norm": np.ones(2, np.float32),
}
M = {
    "layers": {
        0: {"mlp": {"up_proj": np.array([[True, False], [True, True]])}},
        1: {"mlp": {"up_proj": np.array([[False, False], [True, False]])}},
    }
}


def test_paths():
    assert [p for p, _ in tree.leaf_paths(W)] == [
        ("layers", 0, "mlp", "up_proj"),
        ("layers", 1, "mlp", "up_proj"),
        ("norm",),
    ]
    assert tree.get_path(W, ("layers", 1, "mlp", "up_proj"))[1, 0] == 7.0
    t = {}
    tree.set_path(t, ("a", "b"), 1)
    assert t == {"a": {"b": 1}}


def test_apply_masks_zeroes_exactly_the_pruned_entries_and_shares_the_rest():
    out = tree.apply_masks(W, M)
    np.testing.assert_array_equal(out["layers"][0]["mlp"]["up_proj"], [[1.0, 0.0], [3.0, 4.0]])
    np.testing.assert_array_equal(out["layers"][1]["mlp"]["up_proj"], [[0.0, 0.0], [7.0, 0.0]])
    assert out["norm"] is W["norm"]  # no mask: passed through
    assert tree.apply_masks(W, None) is W and tree.apply_masks(W, {}) is W
    jitted = jax.jit(tree.apply_masks)(W, M)  # the train step applies it under jit
    np.testing.assert_array_equal(jitted["layers"][1]["mlp"]["up_proj"], out["layers"][1]["mlp"]["up_proj"])


def test_sparsity_counts_host_and_device_arrays_alike():
    # layer 0 prunes 1 of 4, layer 1 prunes 3 of 4: 4 of 8 overall. W as given holds one zero among the
    # masked weights (layer 1 [0, 1]); once the masks are applied, the 4 pruned entries are zero.
    sp = tree.sparsity(M, W)
    assert sp == {
        "mask_sparsity": 0.5,
        "pruned_weights": 4,
        "masked_weights": 8,
        "per_layer": {0: 0.25, 1: 0.75},
        "zero_fraction": 1 / 8,
    }
    on_device = tree.sparsity(jax.tree.map(jnp.asarray, M), tree.apply_masks(jax.tree.map(jnp.asarray, W), M))
    assert on_device["zero_fraction"] == 4 / 8 and on_device["mask_sparsity"] == 0.5
    assert "zero_fraction" not in tree.sparsity(M)


@pytest.mark.parametrize("on_host", [True, False])
def test_nonfinite_leaf_names_the_first_bad_leaf(monkeypatch, on_host):
    """numpy's check of arrays in CPU memory and the jitted one (other devices, other hosts) agree."""
    monkeypatch.setattr(tree, "_in_host_memory", lambda x: on_host)
    assert tree.nonfinite_leaf(W) is None
    bad = {**W, "layers": {**W["layers"], 1: {"mlp": {"up_proj": np.array([[np.nan, 0.0]], np.float32)}}}}
    assert tree.nonfinite_leaf(bad) == "layers/1/mlp/up_proj"
    inf = jnp.array([[1.0, -jnp.inf]], jnp.bfloat16)
    on_device = {"a": jnp.ones((2,), jnp.bfloat16), "b": {"c": inf}, "d": jnp.array([np.nan])}
    assert tree.nonfinite_leaf(on_device) == "b/c"
    assert tree.nonfinite_leaf({"ids": jnp.arange(3), "x": jnp.zeros(2)}) is None  # integer leaves are skipped


def test_arrays_in_cpu_memory_are_checked_on_the_host():
    assert tree._in_host_memory(np.zeros(2)) and tree._in_host_memory(jnp.zeros(2))
    assert not tree._in_host_memory([0.0])
