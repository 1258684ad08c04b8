"""Sparse pruning: exact counts, N:M along the input axis, Wanda by hand, SparseGPT against a slow OBS."""

import jax.numpy as jnp
import numpy as np
import pytest

from prunejax import calibrate
from prunejax.config import TINY
from prunejax.model import rms_norm
from prunejax.prune import PruneError, sparse
from prunejax.prune.masks import (
    PROJECTIONS,
    as_rows,
    check_ratio,
    from_rows,
    magnitude_keep,
    matrix_mask,
    nm_mask,
    parse_pattern,
    prune_lowest,
    prune_lowest_host,
    row_mask,
)
from prunejax.prune.registry import prune
from prunejax.prune.sparse import sparsegpt_matrix, wanda_scores
from prunejax.sharding import make_mesh

CFG = TINY.replace(num_hidden_layers=2)


SEED, TOKENS_SHAPE = 1, (4, 16)  # conftest's `params` and `tokens` fixtures


# ---- shared mask code on literal arrays -------------------------------------------------
LOWEST = pytest.mark.parametrize("prune_lowest", [prune_lowest, prune_lowest_host], ids=["radix", "host"])


@LOWEST
def test_prune_lowest_is_exact_and_breaks_ties_by_index(prune_lowest):
    scores = jnp.array([[3.0, 1.0, 2.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    np.testing.assert_array_equal(prune_lowest(scores, 2), [[True, False, True, False], [False, False, True, True]])


def test_magnitude_keep_works_in_the_kernel_layout_and_breaks_ties_in_row_order():
    # a q_proj-like kernel (in=2, out=3): W_OI = w.T, so W_OI's index order runs down the columns of w
    w = np.array([[0.9, -0.1, 0.5], [-0.5, 0.9, 0.9]], np.float32)
    # prune 2: the 0.1, then one of the two 0.5s: w[1, 0] comes first in W_OI (row 0), w[0, 2] in the kernel
    np.testing.assert_array_equal(magnitude_keep(w, 1, 2), [[True, False, True], [False, True, True]])
    # an o_proj-like kernel (in = 2 x 1 dims, out=3): the same matrix, the same choice
    np.testing.assert_array_equal(magnitude_keep(w[:, None, :], 2, 2)[:, 0], [[True, False, True], [False, True, True]])
    np.testing.assert_array_equal(magnitude_keep(w, 1, 0), np.ones((2, 3), bool))
    assert not magnitude_keep(w, 1, 6).any()
    with pytest.raises(PruneError, match="cannot prune 7 of 6"):
        magnitude_keep(w, 1, 7)


@pytest.mark.parametrize("shape, n_in", [((24, 4, 8), 1), ((4, 8, 24), 2), ((24, 56), 1)])
@pytest.mark.parametrize("kind", ["continuous", "ties", "constant"])
def test_magnitude_keep_is_prune_lowest_host_on_the_rows(shape, n_in, kind):
    """The kernel-layout selection against the row-layout one it replaced (`as_rows`, one row)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    w = {"continuous": w, "ties": np.round(w * 4) / 4, "constant": np.full_like(w, -0.5)}[kind]
    name = {1: "q_proj", 2: "o_proj"}[n_in]
    for n in (0, 1, w.size // 2, w.size - 1, w.size):
        w_OI = np.abs(np.asarray(as_rows(name, w)))
        expected = np.asarray(from_rows(name, prune_lowest_host(w_OI.reshape(1, -1), n).reshape(w_OI.shape), shape))
        np.testing.assert_array_equal(magnitude_keep(w, n_in, n), expected)


@LOWEST
def test_prune_lowest_orders_negatives_and_treats_signed_zeros_as_equal(prune_lowest):
    scores = jnp.array([[0.0, -0.0, 1.0, -1.0, 0.0, -0.0, 2.0, -2.0]])
    np.testing.assert_array_equal(prune_lowest(scores, 0), [[1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(prune_lowest(scores, 2), [[1, 1, 1, 0, 1, 1, 1, 0]])
    # the four zeros are one tie, pruned from the lowest index on whatever their sign
    np.testing.assert_array_equal(prune_lowest(scores, 3), [[0, 1, 1, 0, 1, 1, 1, 0]])
    np.testing.assert_array_equal(prune_lowest(scores, 5), [[0, 0, 1, 0, 0, 1, 1, 0]])
    np.testing.assert_array_equal(prune_lowest(scores, 8), [[0, 0, 0, 0, 0, 0, 0, 0]])
    with pytest.raises(PruneError, match="cannot prune 9 of 8"):
        prune_lowest(scores, 9)


@LOWEST
@pytest.mark.parametrize("rows", [5, 100])  # the host version ranks ties row by row up to 64 rows
@pytest.mark.parametrize("kind", ["continuous", "ties", "constant", "tiny and huge"])
def test_prune_lowest_equals_a_stable_sort(kind, rows, prune_lowest):
    """Both selections against their definition: rank every row by a stable ascending sort."""
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((rows, 301))).astype(np.float32)
    x = {
        "continuous": x,
        "ties": np.round(x * 3) / 3,
        "constant": np.full_like(x, 0.25),
        "tiny and huge": x * np.float32(1e-38) * (rng.random(x.shape) < 0.5) + x * np.float32(1e30),
    }[kind]
    for n in (0, 1, 150, 300, 301):
        rank = np.empty_like(x, dtype=np.int64)
        np.put_along_axis(rank, np.argsort(x, axis=-1, kind="stable"), np.arange(x.shape[1])[None, :], axis=-1)
        np.testing.assert_array_equal(prune_lowest(jnp.asarray(x), n), rank >= n)


def test_row_matrix_and_nm_masks():
    s = jnp.array([[1.0, 8.0, 3.0, 4.0, 9.0, 2.0, 7.0, 6.0], [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(row_mask(s, 0.25), [[0, 1, 1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(matrix_mask(s, 0.25), [[0, 1, 1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(matrix_mask(s, 0.5).sum(), 8)
    # 2:4 within each row's groups of four consecutive inputs
    np.testing.assert_array_equal(nm_mask(s, 2, 4), [[0, 1, 0, 1, 1, 0, 1, 0], [1, 1, 0, 0, 1, 1, 0, 0]])
    with pytest.raises(PruneError, match="does not divide the input dimension 8"):
        nm_mask(s, 1, 3)


def test_pattern_and_ratio_validation():
    assert parse_pattern("2:4") == (2, 4)
    for bad in ("2-4", "4:2", "0:4", "a:b"):
        with pytest.raises(PruneError):
            parse_pattern(bad)
    with pytest.raises(PruneError, match=r"pattern 2:4 prunes 0.5 of the weights, but the ratio asked is 0.6"):
        check_ratio(0.6, (2, 4))
    for ratio in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(PruneError, match=r"in \(0, 1\)"):
            check_ratio(ratio)


# ---- methods on a tiny model -------------------------------------------------------------
def _untouched(before, after):
    for key in ("embed_tokens", "norm", "lm_head"):
        np.testing.assert_array_equal(before[key], after[key])
    for i, layer in before["layers"].items():
        for key in ("input_layernorm", "post_attention_layernorm"):
            np.testing.assert_array_equal(layer[key], after["layers"][i][key])


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_sparsity_is_exact(params, tokens, method):
    result = prune(CFG, params, method, tokens, ratio=0.3)
    assert set(result.masks) == {"layers"}
    total = pruned = 0
    for i, layer in result.masks["layers"].items():
        for name, (block, _) in PROJECTIONS.items():
            m = np.asarray(as_rows(name, layer[block][name]))
            w = np.asarray(as_rows(name, result.params["layers"][i][block][name]))
            assert np.all(w[~m] == 0)
            if method == "wanda":  # compared within each output row: every row loses the same count
                assert set((~m).sum(axis=1)) == {round(m.shape[1] * 0.3)}
            else:  # magnitude per matrix; SparseGPT per block, with block counts that add up exactly
                assert (~m).sum() == round(m.size * 0.3)
            total += m.size
            pruned += (~m).sum()
        assert set(layer) == {"self_attn", "mlp"}
    assert result.report["realized_ratio"] == pruned / total
    _untouched(params, result.params)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_nm_groups_run_along_the_input_axis(params, tokens, method):
    result = prune(CFG, params, method, tokens, pattern=(2, 4))
    for layer in result.masks["layers"].values():
        for name, (block, _) in PROJECTIONS.items():
            m_OI = np.asarray(as_rows(name, layer[block][name]))  # inputs are the last axis here
            kept = m_OI.reshape(m_OI.shape[0], -1, 4).sum(-1)
            assert np.all(kept == 2), name
    assert result.report["realized_ratio"] == 0.5
    _untouched(params, result.params)


def test_pattern_must_divide_every_input(params, tokens):
    with pytest.raises(PruneError, match=r"2:32 does not divide the input dimension 176 of layers/0/mlp/down_proj"):
        prune(CFG, params, "wanda", tokens, pattern=(2, 32))


def test_wanda_scores_by_hand():
    w_OI = np.array([[1.0, -2.0, 0.5], [-3.0, 0.25, 4.0]], np.float32)
    x_TI = np.array([[1.0, 0.0, 2.0], [2.0, 1.0, 0.0], [2.0, 3.0, 1.0]], np.float32)
    expected = np.empty_like(w_OI)
    for i in range(2):
        for j in range(3):
            expected[i, j] = abs(w_OI[i, j]) * np.sqrt(sum(x_TI[t, j] ** 2 for t in range(3)))
    # column norms: sqrt(9)=3, sqrt(10), sqrt(5)
    np.testing.assert_allclose(wanda_scores(jnp.asarray(w_OI), jnp.asarray((x_TI**2).sum(0))), expected, rtol=1e-6)


def test_wanda_first_layer_mask_by_hand(params, tokens):
    """Layer 0 sees the embeddings, so its masks follow from |W|·‖rms_norm(embed)‖ computed here."""
    result = prune(CFG, params, "wanda", tokens, ratio=0.5)
    lp = params["layers"]["0"]
    x = np.asarray(params["embed_tokens"])[tokens]
    a = np.asarray(rms_norm(jnp.asarray(x), lp["input_layernorm"], CFG.rms_norm_eps)).reshape(-1, CFG.hidden_size)
    norm_I = np.sqrt((a.astype(np.float64) ** 2).sum(0))
    w_OI = np.asarray(as_rows("q_proj", lp["self_attn"]["q_proj"]), np.float64)
    score = np.abs(w_OI) * norm_I[None, :]
    expected = np.ones_like(score, bool)
    order = np.argsort(score, axis=1, kind="stable")[:, : CFG.hidden_size // 2]
    np.put_along_axis(expected, order, False, axis=1)
    got = np.asarray(as_rows("q_proj", result.masks["layers"]["0"]["self_attn"]["q_proj"]))
    np.testing.assert_array_equal(got, expected)


# ---- SparseGPT against a slow, straightforward OBS ---------------------------------------
def slow_obs(w_OI, h_II, ratio, pattern, block, damp=0.01):
    """Column by column: prune, then move the rest of the row by the OBS update computed from an
    explicit inverse of the Hessian restricted to the columns not processed yet."""
    w = w_OI.astype(np.float64).copy()
    h = h_II.astype(np.float64).copy()
    o, i = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(i)
    d = np.array([np.linalg.inv(h[j:, j:])[0, 0] for j in range(i)])
    mask = np.ones((o, i), bool)
    for j in range(i):
        if pattern is None and j % block == 0:
            c1 = min(j + block, i)
            n_prune = round(o * c1 * ratio) - round(o * j * ratio)
            scores = (w[:, j:c1] ** 2 / d[None, j:c1]).reshape(-1)
            blk = np.ones(scores.size, bool)
            blk[np.argsort(scores, kind="stable")[:n_prune]] = False
            mask[:, j:c1] = blk.reshape(o, c1 - j)
        if pattern is not None and j % pattern[1] == 0:
            n, m = pattern
            scores = w[:, j : j + m] ** 2 / d[None, j : j + m]
            for r in range(o):
                mask[r, j + np.argsort(scores[r], kind="stable")[: m - n]] = False
        hinv = np.linalg.inv(h[j:, j:])
        for r in range(o):
            if not mask[r, j]:
                w[r, j:] -= w[r, j] / hinv[0, 0] * hinv[0, :]
                w[r, j] = 0.0
    return w, mask


def _problem(o, i, t, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(t, i)) @ rng.normal(size=(i, i)) * np.exp(rng.normal(size=(1, i)))  # correlated, uneven
    x[:, 3] = 0.0  # one dead input
    return rng.normal(size=(o, i)).astype(np.float32), x.astype(np.float32)


@pytest.mark.parametrize("pattern, block", [(None, 8), (None, 32), ((2, 4), 8)])
def test_sparsegpt_equals_slow_obs(pattern, block):
    w, x = _problem(6, 20 if pattern is None else 16, 64, seed=0)
    h = x.T @ x
    got_w, got_m = sparsegpt_matrix(jnp.asarray(w), jnp.asarray(h), 0.5, pattern, block_size=block)
    ref_w, ref_m = slow_obs(w, h, 0.5, pattern, block)
    np.testing.assert_array_equal(got_m, ref_m)
    np.testing.assert_allclose(got_w, ref_w, rtol=1e-4, atol=1e-4)
    assert (~np.asarray(got_m)).sum() == w.size // 2


@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_sparsegpt_sharded_over_rows_equals_the_single_device_solve(pattern):
    """The solve on a mesh of 8 devices with W's rows split 2 per device gives the single-device masks and
    weights (to the float policy); rows that do not divide the devices are solved whole on each."""
    w, x = _problem(16, 24, 64, seed=3)
    h = x.T @ x
    mesh = make_mesh(data=2, fsdp=2, tp=2)
    rows, everywhere = sparse.row_placement(mesh, 16)
    assert rows.shard_shape((16, 24)) == (2, 24) and everywhere.is_fully_replicated
    one_w, one_m = sparsegpt_matrix(jnp.asarray(w), jnp.asarray(h), 0.5, pattern, block_size=8)
    got_w, got_m = sparsegpt_matrix(jnp.asarray(w), jnp.asarray(h), 0.5, pattern, block_size=8, mesh=mesh)
    np.testing.assert_array_equal(got_m, one_m)
    np.testing.assert_allclose(got_w, one_w, rtol=1e-5, atol=1e-6)
    odd_rows, _ = sparse.row_placement(mesh, 6)  # 6 rows on 8 devices: whole on each, not a wrong split
    assert odd_rows.is_fully_replicated
    w6 = w[:6]
    np.testing.assert_array_equal(
        sparsegpt_matrix(jnp.asarray(w6), jnp.asarray(h), 0.5, pattern, block_size=8, mesh=mesh)[1],
        sparsegpt_matrix(jnp.asarray(w6), jnp.asarray(h), 0.5, pattern, block_size=8)[1],
    )


def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude():
    w, x = _problem(32, 64, 512, seed=2)
    h = x.T @ x

    def err(w_hat):
        return float(np.linalg.norm(x @ w.T - x @ np.asarray(w_hat).T))

    for pattern in (None, (2, 4)):
        sgpt, _ = sparsegpt_matrix(jnp.asarray(w), jnp.asarray(h), 0.5, pattern)
        wanda_m = (
            nm_mask(wanda_scores(jnp.asarray(w), jnp.diag(jnp.asarray(h))), 2, 4)
            if pattern
            else row_mask(wanda_scores(jnp.asarray(w), jnp.diag(jnp.asarray(h))), 0.5)
        )
        mag_m = nm_mask(jnp.abs(jnp.asarray(w)), 2, 4) if pattern else matrix_mask(jnp.abs(jnp.asarray(w)), 0.5)
        e_sgpt, e_wanda, e_mag = err(sgpt), err(np.where(wanda_m, w, 0)), err(np.where(mag_m, w, 0))
        assert e_sgpt < e_wanda and e_sgpt < e_mag, (pattern, e_sgpt, e_wanda, e_mag)


def test_sparse_methods_reject_a_target(params, tokens):
    from prunejax.prune import Target

    with pytest.raises(PruneError, match="sparse methods keep every shape"):
        prune(CFG, params, "sparsegpt", tokens, target=Target(hidden=32))
    with pytest.raises(PruneError, match="unknown pruning method 'sparsegtp'; valid methods: .*sparsegpt"):
        prune(CFG, params, "sparsegtp", tokens, ratio=0.5)


def test_calibration_layer_statistics_feed_wanda(params, tokens):
    """The method's statistics are the engine's: a sanity link between the two modules."""
    _, stats = calibrate.sequential(CFG, params, tokens, ("sq_norm",))
    assert stats["0"]["sq_norm"]["down"].shape == (CFG.intermediate_size,)
