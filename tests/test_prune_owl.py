"""OWL: the allocation on hand-made outlier ratios, its bounds and ordering, exact counts, λ = 0 is Wanda,
the CLI, the refusals, and the same masks on a mesh and on 2 processes as on 1."""

import jax
import numpy as np
import pytest
from multiproc import CFG as MP_CFG
from multiproc import assert_same_tree, start, wait

from prunejax import hf
from prunejax.cli import main
from prunejax.config import TINY
from prunejax.data.store import write_data_dir
from prunejax.model import init_params
from prunejax.prune import PruneError
from prunejax.prune.masks import PROJECTIONS, as_rows
from prunejax.prune.owl import layer_ratios, matrix_counts, outlier_ratio
from prunejax.prune.registry import prune
from prunejax.prune.sparse import wanda_mask
from prunejax.sharding import make_mesh

CFG = TINY  # 4 layers: something to allocate between


SEED, TOKENS_SHAPE = 1, (4, 16)  # conftest's `params` and `tokens` fixtures


def paper_ratios(d, ratio, lam):
    """The authors' and llm-compressor's map: (D - min)/(max - min)·2λ, minus its plain mean, from t."""
    d = np.asarray(d, np.float64)
    x = (d - d.min()) / (d.max() - d.min()) * 2 * lam
    return ratio - (x - x.mean())


# ---- the allocation on literal outlier ratios -------------------------------------------
def test_layer_ratios_by_hand():
    # D = 1, 3, 2, 6 %: weighted mean 3, deviations -2, 0, -1, 3, the largest 3; s = 0.7 - 0.06·dev/3
    np.testing.assert_allclose(
        layer_ratios([0.01, 0.03, 0.02, 0.06], [10, 10, 10, 10], 0.7, 0.06), [0.74, 0.70, 0.72, 0.64], atol=1e-15
    )
    # sizes 3 and 1: weighted mean of D = 0.01, deviations -0.01 and 0.03; s = 0.5 + 0.06·[1/3, -1]
    s = layer_ratios([0.0, 0.04], [3, 1], 0.5, 0.06)
    np.testing.assert_allclose(s, [0.52, 0.44], atol=1e-15)
    assert (3 * s[0] + s[1]) / 4 == pytest.approx(0.5, abs=1e-15)


def test_layer_ratios_equal_the_papers_when_the_mean_is_midway_and_stay_within_lambda_otherwise():
    np.testing.assert_allclose(layer_ratios([1, 2, 3], [5, 5, 5], 0.6, 0.08), [0.68, 0.60, 0.52], atol=1e-15)
    np.testing.assert_allclose(paper_ratios([1, 2, 3], 0.6, 0.08), [0.68, 0.60, 0.52], atol=1e-15)
    # D = 1, 2, 3, 6: the paper's map sends the 6 to t - 0.096, beyond λ = 0.08; ours to t - 0.08
    np.testing.assert_allclose(paper_ratios([1, 2, 3, 6], 0.6, 0.08)[3], 0.504, atol=1e-15)
    np.testing.assert_allclose(
        layer_ratios([1, 2, 3, 6], [1, 1, 1, 1], 0.6, 0.08), [0.6 + 0.16 / 3, 0.6 + 0.08 / 3, 0.6, 0.52], atol=1e-15
    )


def test_the_range_map_is_the_papers_on_equal_layers_and_keeps_the_total_on_unequal_ones():
    # D = 1, 2, 3, 6 at t = 0.6, λ = 0.08: r = 0.16·(D - 1)/5 = 0, 0.032, 0.064, 0.16, mean 0.064
    s = layer_ratios([1, 2, 3, 6], [1, 1, 1, 1], 0.6, 0.08, "range")
    np.testing.assert_allclose(s, [0.664, 0.632, 0.6, 0.504], atol=1e-15)
    np.testing.assert_allclose(s, paper_ratios([1, 2, 3, 6], 0.6, 0.08), atol=1e-15)
    # sizes 3 and 1, D = 0, 4: r = 0, 0.12; its size-weighted mean 0.03; s = 0.5 + 0.03, 0.5 - 0.09
    s = layer_ratios([0.0, 0.04], [3, 1], 0.5, 0.06, "range")
    np.testing.assert_allclose(s, [0.53, 0.41], atol=1e-15)
    assert (3 * s[0] + s[1]) / 4 == pytest.approx(0.5, abs=1e-15)
    np.testing.assert_array_equal(layer_ratios([0.02, 0.02], [1, 2], 0.7, 0.08, "range"), [0.7, 0.7])


@pytest.mark.parametrize("seed", range(5))
def test_layer_ratios_bounds_mean_and_order(seed):
    rng = np.random.default_rng(seed)
    d, sizes = rng.uniform(0, 0.05, 12), rng.integers(1, 100, 12)
    s = layer_ratios(d, sizes, 0.7, 0.08)
    assert np.all(np.abs(s - 0.7) <= 0.08 + 1e-15) and np.max(np.abs(s - 0.7)) == pytest.approx(0.08, abs=1e-15)
    assert np.sum(s * sizes) / np.sum(sizes) == pytest.approx(0.7, abs=1e-14)
    order = np.argsort(d)
    assert np.all(np.diff(s[order]) < 0)  # more outliers, pruned less


def test_no_spread_or_no_lambda_is_uniform():
    np.testing.assert_array_equal(layer_ratios([0.02, 0.02, 0.02], [1, 2, 3], 0.7, 0.08), [0.7, 0.7, 0.7])
    np.testing.assert_array_equal(layer_ratios([0.01, 0.05], [1, 1], 0.7, 0.0), [0.7, 0.7])


def test_matrix_counts_by_hand():
    # ideal 7.4 3.7 | 7.0 3.5 | 7.2 3.6 | 6.4 3.2 (sum 42 = round(0.7·60)); floors sum to 39; the 3
    # largest remainders (.7, .6, .5) get one more
    counts = matrix_counts([0.74, 0.70, 0.72, 0.64], np.array([[10, 5]] * 4), 0.7)
    np.testing.assert_array_equal(counts, [[7, 4], [7, 4], [7, 4], [6, 3]])
    # equal remainders: the earlier matrix first
    np.testing.assert_array_equal(matrix_counts([0.5, 0.5], np.array([[3], [3]]), 0.5), [[2], [1]])


def test_wanda_mask_gives_the_first_rows_one_more():
    scores = np.array([[4.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 1.0, 5.0]], np.float32)
    # 5 of 12: one per row, and one more in each of the first two rows
    expected = [[True, False, True, False], [False, False, True, True], [True, True, False, True]]
    np.testing.assert_array_equal(wanda_mask(scores, 5), expected)
    np.testing.assert_array_equal(
        wanda_mask(scores, 3), [[True, False, True, True], [False, True, True, True], expected[2]]
    )


def test_outlier_ratio_by_hand():
    # one layer of 1 x 1 projections: scores |w|·sqrt(sq_norm) = 1, 1, 1, 1, 1, 1, 10; mean 16/7
    ones = {"q_proj": 1.0, "k_proj": 1.0, "v_proj": 1.0, "o_proj": 1.0, "gate_proj": 1.0, "up_proj": 1.0}
    lp = {"self_attn": {}, "mlp": {}}
    for name, (block, n_in) in PROJECTIONS.items():
        lp[block][name] = np.full((1,) * (n_in + 1), ones.get(name, -10.0), np.float32)
    sq = {"attn": np.ones(1), "o": np.ones(1), "mlp": np.ones(1), "down": np.ones(1)}
    assert outlier_ratio(lp, sq, 4.0) == 1 / 7  # 10 > 4·16/7 = 9.14
    assert outlier_ratio(lp, sq, 5.0) == 0.0  # 10 < 5·16/7 = 11.4


# ---- on a tiny model --------------------------------------------------------------------
def test_realized_ratio_is_the_request_and_layers_follow_their_outliers(params, tokens):
    result = prune(CFG, params, "owl", tokens, ratio=0.7, owl_m=2.0)
    r = result.report
    total = 0
    for i, layer in result.masks["layers"].items():
        size = 0
        for name, (block, _) in PROJECTIONS.items():
            m = np.asarray(as_rows(name, layer[block][name]))
            w = np.asarray(as_rows(name, result.params["layers"][i][block][name]))
            assert np.all(w[~m] == 0)
            assert (~m).sum(axis=1).max() - (~m).sum(axis=1).min() <= 1  # compared within rows
            size += m.size
        assert abs(r["per_layer"][i] - r["layer_ratios"][i]) < 7 / size  # one weight per matrix
        assert abs(r["per_layer"][i] - 0.7) < 0.08 + 7 / size
        total += size
    assert r["realized_ratio"] == round(0.7 * total) / total
    d, s = [r["outlier_ratios"][k] for k in sorted(r["per_layer"])], [r["per_layer"][k] for k in sorted(r["per_layer"])]
    assert len(set(d)) == 4  # the allocation has something to do
    order = np.argsort(d)
    assert np.all(np.diff(np.asarray(s)[order]) < 0)
    for k in ("embed_tokens", "norm", "lm_head"):
        np.testing.assert_array_equal(params[k], result.params[k])


@pytest.mark.parametrize("ratio", [0.5, 0.75])  # t·I is whole for every input width (64, 176)
def test_lambda_zero_is_wanda(params, tokens, ratio):
    owl = prune(CFG, params, "owl", tokens, ratio=ratio, owl_lambda=0.0)
    wanda = prune(CFG, params, "wanda", tokens, ratio=ratio)
    jax.tree.map(np.testing.assert_array_equal, owl.masks, wanda.masks)
    jax.tree.map(np.testing.assert_array_equal, owl.params, wanda.params)


def test_refusals(params, tokens):
    with pytest.raises(PruneError, match="--method owl does not take an N:M pattern: 2:4 fixes every layer"):
        prune(CFG, params, "owl", tokens, ratio=0.5, pattern=(2, 4))
    with pytest.raises(PruneError, match=r"--owl-lambda must be at least 0 and keep every layer's ratio t ± λ in"):
        prune(CFG, params, "owl", tokens, ratio=0.95)
    with pytest.raises(PruneError, match=r"t ± 2λ in \[0, 1\) \(--owl-map range\); at --ratio 0.9 it is 0.08"):
        prune(CFG, params, "owl", tokens, ratio=0.9, owl_map="range")  # 0.9 + 0.08 < 1, but 0.9 + 0.16 is not
    with pytest.raises(PruneError, match="--owl-map must be one of bounded, range, got 'paper'"):
        prune(CFG, params, "owl", tokens, ratio=0.5, owl_map="paper")
    with pytest.raises(PruneError, match="at --ratio 0.05 it is 0.08"):
        prune(CFG, params, "owl", tokens, ratio=0.05)
    with pytest.raises(PruneError, match="--owl-m must be positive"):
        prune(CFG, params, "owl", tokens, ratio=0.5, owl_m=0.0)
    with pytest.raises(PruneError, match="sparse methods keep every shape"):
        from prunejax.prune import Target

        prune(CFG, params, "owl", tokens, target=Target(hidden=32))


def test_masks_equal_on_a_mesh(params, tokens):
    one = prune(CFG, params, "owl", tokens, ratio=0.7, owl_m=2.0, batch_size=4)
    meshed = prune(CFG, params, "owl", tokens, ratio=0.7, owl_m=2.0, batch_size=4, mesh=make_mesh(data=4, tp=2))
    jax.tree.map(np.testing.assert_array_equal, meshed.masks, one.masks)
    assert meshed.report["layer_ratios"] == one.report["layer_ratios"]


# ---- the CLI ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("owl_cli")
    hf.save(str(root / "model"), CFG, init_params(CFG, jax.random.key(4)))
    chunks = [np.random.default_rng(4).integers(0, CFG.vocab_size, 4 * 32, dtype=np.int32)]
    write_data_dir(str(root / "data"), {"train": chunks, "validation": chunks}, vocab_size=CFG.vocab_size, eos_id=0)
    return root


def run(dirs, *extra, out):
    base = ["prune", "--model", str(dirs / "model"), "--calib", str(dirs / "data"), "--calib-samples", "4"]
    return main([*base, "--calib-seq-len", "32", "--out", str(dirs / out), *extra])


def test_cli_writes_a_sparse_model_dir(dirs, capsys):
    assert run(dirs, "--method", "owl", "--ratio", "0.7", "--owl-m", "5", "--owl-lambda", "0.08", out="owl") == 0
    prov = hf.load_provenance(str(dirs / "owl"))
    assert prov["method"] == "owl" and prov["options"]["owl_m"] == 5.0 and prov["options"]["owl_lambda"] == 0.08
    cfg, _ = hf.load(str(dirs / "owl"))
    masks = hf.load_masks(str(dirs / "owl"), cfg)
    total = sum(np.asarray(m).size for m in jax.tree.leaves(masks))
    assert prov["realized_ratio"] == prov["sparsity"]["mask_sparsity"] == round(0.7 * total) / total
    assert set(prov["report"]["layer_ratios"]) == {"0", "1", "2", "3"}
    assert "method owl: requested ratio 0.7" in capsys.readouterr().out
    # the defaults are the paper's
    assert run(dirs, "--method", "owl", "--ratio", "0.7", out="owl-defaults") == 0
    defaults = hf.load_provenance(str(dirs / "owl-defaults"))
    assert defaults["options"]["owl_m"] == 5.0 and defaults["options"]["owl_lambda"] == 0.08
    assert defaults["options"]["owl_map"] == defaults["report"]["owl_map"] == "bounded"
    assert defaults["report"]["layer_ratios"] == prov["report"]["layer_ratios"]
    # the OWL authors' map: the same outlier ratios, their layer ratios
    assert run(dirs, "--method", "owl", "--ratio", "0.7", "--owl-map", "range", out="owl-range") == 0
    ranged = hf.load_provenance(str(dirs / "owl-range"))
    assert ranged["options"]["owl_map"] == "range"
    assert ranged["report"]["outlier_ratios"] == prov["report"]["outlier_ratios"]
    keys = sorted(ranged["report"]["layer_ratios"], key=int)
    expected = paper_ratios([ranged["report"]["outlier_ratios"][k] for k in keys], 0.7, 0.08)  # equal layers
    np.testing.assert_allclose([ranged["report"]["layer_ratios"][k] for k in keys], expected, atol=1e-12)
    assert ranged["realized_ratio"] == prov["realized_ratio"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "owl", "--ratio", "0.5", "--pattern", "2:4"], "--method owl does not take an N:M pattern"),
        (["--method", "owl", "--ratio", "0.95"], "--owl-lambda must be at least 0"),
        (["--method", "wanda", "--ratio", "0.5", "--owl-m", "3"], "--owl-m/--owl-lambda/--owl-map apply to owl only"),
        (["--method", "owl", "--ratio", "0.9", "--owl-map", "range"], "t ± 2λ in [0, 1) (--owl-map range)"),
    ],
)
def test_cli_refuses_before_any_work(dirs, capsys, args, message):
    assert run(dirs, *args, out="bad") == 1
    err = capsys.readouterr().err
    assert "prunejax prune: error:" in err and message in err, err
    assert not (dirs / "bad").exists()


def test_two_processes_write_the_same_model_dir(tmp_path):
    model = hf.save(str(tmp_path / "model"), MP_CFG, init_params(MP_CFG, jax.random.key(0)))
    chunks = {"train": [np.random.default_rng(0).integers(1, 256, 2_000)]}
    data = write_data_dir(str(tmp_path / "data"), chunks, vocab_size=256, eos_id=0)
    calib = ["--calib", data, "--calib-samples", "16", "--calib-seq-len", "32", "--batch-size", "8"]

    def argv(out):
        return ["prune", "--model", model, "--method", "owl", "--ratio", "0.7", "--owl-m", "2", *calib, "--out", out]

    one, two = str(tmp_path / "1x8"), str(tmp_path / "2x4")
    single, multi = start(argv(one), processes=1, devices=8), start(argv(two), processes=2, devices=4)
    wait(single).check()
    wait(multi).check()
    assert_same_tree(one, two)
