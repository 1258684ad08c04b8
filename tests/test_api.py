"""The public API on tiny models, through `prunejax.*` names only: masks are composed, carried, saved,
loaded and held through a retrain; a sparse model never loses its masks silently."""

import jax
import numpy as np
import pytest

import prunejax
from prunejax.data.store import write_data_dir  # a test fixture's DATA_DIR, not part of what is tested

CFG = prunejax.preset("tiny")  # 4 layers, hidden 64, FFN 176, vocab 512
TRAIN = ["seq_len=32", "global_batch=8", "peak_lr=3e-3", "val_batches=0", "peak_tflops=1.0"]
STEP_TOKENS = 8 * 32


@pytest.fixture(scope="module")
def dense():
    return prunejax.Model(CFG, prunejax.init_params(CFG, jax.random.key(0)))


@pytest.fixture(scope="module")
def calib():
    return np.random.default_rng(0).integers(0, CFG.vocab_size, (4, 32), dtype=np.int32)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    rng = np.random.default_rng(1)
    chunks = [rng.integers(1, CFG.vocab_size, 64 * 33, dtype=np.int32)]
    root = tmp_path_factory.mktemp("api")
    splits = {"train": chunks, "validation": chunks}
    return write_data_dir(str(root / "data"), splits, vocab_size=CFG.vocab_size, eos_id=0)


def leaves(tree, prefix=()):
    for k, v in tree.items():
        yield from leaves(v, (*prefix, k)) if isinstance(v, dict) else [((*prefix, k), v)]


def at(tree, path):
    for k in path:
        tree = tree[k]
    return np.asarray(tree)


def projection_zero_fraction(model):
    """The zero fraction of the seven projections of every layer, counted here from the params."""
    ws = [at(model.params, p) for p, _ in leaves(model.params) if p[0] == "layers" and p[-1].endswith("_proj")]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.size for w in ws)


def assert_masks_hold(model):
    assert model.masks
    for path, m in leaves(model.masks):
        assert not np.any(at(model.params, path)[~np.asarray(m)]), "/".join(path)


def test_wanda_then_depth_keeps_masks_and_the_survivors_masks_match(dense, calib):
    sparse = prunejax.prune(dense, "wanda", calib, ratio=0.5)
    assert sparse.provenance["realized_ratio"] == 0.5 and projection_zero_fraction(sparse) == 0.5
    shallow = prunejax.prune(sparse, "minitron-depth", calib, ratio=0.5)
    removed = shallow.provenance["report"]["removed_layers"]
    kept = [i for i in range(CFG.num_hidden_layers) if i not in removed]
    assert shallow.cfg.num_hidden_layers == len(kept) == 2
    assert sorted(shallow.masks["layers"]) == ["0", "1"]
    for new, old in enumerate(kept):
        for path, m in leaves(sparse.masks["layers"][str(old)]):
            np.testing.assert_array_equal(at(shallow.masks["layers"][str(new)], path), np.asarray(m))
            np.testing.assert_array_equal(
                at(shallow.params["layers"][str(new)], path), at(sparse.params["layers"][str(old)], path)
            )
    assert_masks_hold(shallow)
    assert shallow.provenance["realized_ratio"] == 0.5  # the layers removed
    assert shallow.provenance["overall_ratio"] == pytest.approx(0.75)  # removed or zeroed: 1 - 0.5 x 0.5
    assert shallow.provenance["parent_provenance"]["method"] == "wanda"


def test_width_on_a_sparse_model_is_refused(dense, calib):
    sparse = prunejax.prune(dense, "magnitude", ratio=0.5)
    with pytest.raises(ValueError, match="is sparse .*minitron-width removes whole rows or heads"):
        prunejax.prune(sparse, "minitron-width", calib, ratio=0.5)


def test_magnitude_then_wanda_is_the_union_and_realizes_the_true_zero_fraction(dense, calib):
    half = prunejax.prune(dense, "magnitude", ratio=0.5)
    again = prunejax.prune(half, "wanda", calib, ratio=0.3)
    for path, m in leaves(half.masks):
        new = at(again.masks, path)
        assert not np.any(new & ~np.asarray(m)), "/".join(path)  # nothing magnitude zeroed is kept
    assert_masks_hold(again)
    realized = again.provenance["realized_ratio"]
    assert realized == pytest.approx(projection_zero_fraction(again), abs=1e-12)
    assert realized >= 0.5 and again.provenance["input_sparsity"] == 0.5
    assert again.provenance["report"]["method_realized_ratio"] == pytest.approx(0.3, abs=0.01)


def test_save_and_load_round_trip_a_sparse_model(dense, calib, tmp_path):
    sparse = prunejax.prune(dense, "wanda", calib, ratio=0.5)
    out = prunejax.save(str(tmp_path / "sparse"), sparse)
    assert (tmp_path / "sparse" / "masks.safetensors").exists()
    back = prunejax.load(out)
    assert back.cfg == sparse.cfg
    for path, m in leaves(sparse.masks):
        np.testing.assert_array_equal(at(back.masks, path), np.asarray(m))
    for path, w in leaves(sparse.params):
        np.testing.assert_array_equal(at(back.params, path), np.asarray(w))
    assert back.provenance["method"] == "wanda" and back.provenance["realized_ratio"] == 0.5
    assert back.provenance["sparsity"]["zero_fraction"] == 0.5


def test_a_sparse_model_without_masks_is_not_saved_dense_silently(dense, calib, tmp_path):
    sparse = prunejax.prune(dense, "wanda", calib, ratio=0.5)
    unmasked = prunejax.Model(sparse.cfg, sparse.params)
    with pytest.raises(ValueError, match="no masks but 50.0% of its projection weights are zero"):
        prunejax.save(str(tmp_path / "lost"), unmasked)
    assert not (tmp_path / "lost").exists()
    prunejax.save(str(tmp_path / "dense"), unmasked, allow_dense=True)  # said explicitly
    assert not (tmp_path / "dense" / "masks.safetensors").exists()
    with pytest.raises(TypeError, match=r"prunejax.save\(out_dir, prunejax.Model\(cfg, params, masks\)\)"):
        prunejax.save(str(tmp_path / "old"), sparse.cfg, sparse.params)
    prunejax.save(str(tmp_path / "plain"), dense)  # a dense model needs nothing
    assert prunejax.load(str(tmp_path / "plain")).masks is None


def test_a_retrain_of_a_composed_model_keeps_every_pruned_weight_at_zero(dense, calib, data_dir, tmp_path):
    composed = prunejax.prune(prunejax.prune(dense, "magnitude", ratio=0.5), "wanda", calib, ratio=0.3)
    composed = prunejax.prune(composed, "minitron-depth", calib, ratio=0.5)
    out = str(tmp_path / "run")
    trained = prunejax.train(composed, data_dir, tokens=3 * STEP_TOKENS, out=out, overrides=TRAIN, progress=False)
    assert trained.provenance["run"]["steps"] == 3
    for path, m in leaves(composed.masks):
        np.testing.assert_array_equal(at(trained.masks, path), np.asarray(m))
    assert_masks_hold(trained)
    assert projection_zero_fraction(trained) == pytest.approx(projection_zero_fraction(composed), abs=1e-6)
    w0, w1 = (at(m.params, ("layers", "0", "mlp", "up_proj")) for m in (composed, trained))
    assert not np.array_equal(w0, w1)  # it trained: the kept weights moved
    # the same call again resumes the finished run (the model is written to `<out>.init` each time)
    again = prunejax.train(composed, data_dir, tokens=3 * STEP_TOKENS, out=out, overrides=TRAIN, progress=False)
    np.testing.assert_array_equal(at(again.params, ("layers", "0", "mlp", "up_proj")), w1)


def test_evaluate_and_forward_take_the_model(dense, calib, data_dir, tmp_path):
    sparse = prunejax.prune(dense, "magnitude", ratio=0.5)
    results = prunejax.evaluate(sparse, data=data_dir, seq_len=32, batch_size=8, max_tokens=512)
    assert np.isfinite(results["validation_loss"]) and results["model"]["masks"]["applied"]
    assert results["model"]["masks"]["mask_sparsity"] == 0.5
    written = prunejax.evaluate(sparse, data=data_dir, seq_len=32, max_tokens=512, out=str(tmp_path / "r.json"))
    assert written["validation_loss"] == pytest.approx(results["validation_loss"], rel=1e-6)
    ppl = prunejax.perplexity(sparse, calib.reshape(-1), 32)
    assert np.isfinite(ppl["perplexity"]) and ppl["scored_tokens"] > 0
    logits = prunejax.forward(sparse.cfg, sparse.params, calib[:2])
    assert logits.shape == (2, 32, CFG.vocab_size)


def test_the_public_names_are_the_api():
    assert {"Model", "load", "save", "prune", "train", "evaluate", "forward", "calibration_tokens"} <= set(
        prunejax.__all__
    )
    with pytest.raises(TypeError, match="prunejax.Model"):
        prunejax.prune("models/x", "magnitude", ratio=0.5)


def test_calibration_tokens_must_fit_the_vocabulary(dense, calib):
    with pytest.raises(ValueError, match=r"calib_tokens: token ids outside the model's vocabulary \[0, 512\)"):
        prunejax.prune(dense, "wanda", calib + CFG.vocab_size, ratio=0.5)
    with pytest.raises(ValueError, match="wanda needs calibration tokens"):
        prunejax.prune(dense, "wanda", ratio=0.5)


def test_a_model_shows_its_shape_not_its_weights(dense):
    sparse = prunejax.prune(dense, "magnitude", ratio=0.5)
    shown = repr(sparse)
    assert "layers 4, hidden 64" in shown and "masks sparsity 0.5000" in shown and len(shown) < 200
