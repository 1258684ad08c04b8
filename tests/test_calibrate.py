"""Calibration engine: statistics equal hand computations, batching and sharding do not change them,
pruned layers feed the next layer, and bad data fails clearly."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prunejax import calibrate, model
from prunejax.config import TINY
from prunejax.data.store import write_data_dir
from prunejax.model import forward, layer_forward, rms_norm
from prunejax.prune.keep import shrink
from prunejax.sharding import make_mesh

CFG = TINY.replace(num_hidden_layers=3)


SEED, TOKENS_SHAPE = 0, (8, 16)  # conftest's `params` and `tokens` fixtures


def test_layer_taps_match_the_model(params, tokens):
    x = calibrate.embed_tokens(CFG, params, tokens)
    y, taps = model.layer_taps(CFG, params["layers"]["1"], jnp.asarray(x))
    np.testing.assert_allclose(y, layer_forward(CFG, params["layers"]["1"], jnp.asarray(x)), atol=1e-5)
    assert taps["o"].shape == (8, 16, CFG.num_attention_heads, CFG.head_dim)
    assert taps["down"].shape == (8, 16, CFG.intermediate_size)


def test_statistics_equal_hand_sums(params, tokens):
    lp = params["layers"]["0"]
    x = jnp.asarray(calibrate.embed_tokens(CFG, params, tokens))
    _, stats = calibrate.layer_statistics(CFG, lp, x, ("act", "cosine", "hessian", "sq_norm"))
    _, taps = model.layer_taps(CFG, lp, x)
    a = np.asarray(rms_norm(x, lp["input_layernorm"], CFG.rms_norm_eps)).reshape(-1, CFG.hidden_size)
    np.testing.assert_allclose(stats["hessian"]["attn"], a.T @ a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["sq_norm"]["attn"], (a * a).sum(0), rtol=1e-5)
    f = np.asarray(taps["down"])  # [B,L,F]
    np.testing.assert_allclose(stats["act"]["mlp"], (np.abs(f).mean(axis=1) ** 2).sum(0), rtol=1e-5)
    y = np.asarray(layer_forward(CFG, lp, x))
    xn = np.asarray(x)
    cos = (xn * y).sum(-1) / np.linalg.norm(xn, axis=-1) / np.linalg.norm(y, axis=-1)
    np.testing.assert_allclose(stats["cosine"], cos.sum(), rtol=1e-5)
    assert stats["tokens"] == 8 * 16


def test_batching_and_sharding_do_not_change_statistics(params, tokens):
    _, one = calibrate.sequential(CFG, params, tokens, ("hessian",), batch_size=8)
    _, small = calibrate.sequential(CFG, params, tokens, ("hessian",), batch_size=3)
    _, sharded = calibrate.sequential(CFG, params, tokens, ("hessian",), batch_size=8, mesh=make_mesh(data=-1))
    for k in one:
        for name in calibrate.INPUTS:
            np.testing.assert_allclose(small[k]["hessian"][name], one[k]["hessian"][name], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(sharded[k]["hessian"][name], one[k]["hessian"][name], rtol=1e-4, atol=1e-4)


def test_small_batch_shards_the_sequence_and_only_indivisible_shapes_replicate_visibly(monkeypatch, caplog):
    monkeypatch.setattr(calibrate, "_unsharded", set())
    mesh = make_mesh(data=-1)
    assert calibrate._place(np.zeros((16, 2), np.float32), mesh).sharding.shard_shape((16, 2)) == (2, 2)
    small = calibrate._place(np.zeros((2, 16, 3), np.float32), mesh)  # batch 2 on 8 devices: split L
    assert small.sharding.shard_shape((2, 16, 3)) == (2, 2, 3)
    assert len(small.sharding.device_set) == 8
    with caplog.at_level(logging.WARNING, logger="prunejax.calibrate"):
        for _ in range(2):
            x = calibrate._place(np.zeros((3, 2), np.float32), mesh)
    assert x.sharding.is_fully_replicated and len(x.sharding.device_set) == 8
    assert sum("divides 8 batch shards in neither B nor L" in r.getMessage() for r in caplog.records) == 1


def test_sequence_sharded_statistics_equal_batch_sharded(params, tokens):
    _, one = calibrate.sequential(CFG, params, tokens[:2], ("hessian", "act"), batch_size=2)
    _, seq = calibrate.sequential(CFG, params, tokens[:2], ("hessian", "act"), batch_size=2, mesh=make_mesh(data=-1))
    for k in one:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), seq[k], one[k])


def test_pruned_layer_feeds_the_next(params, tokens):
    def make_identity(key, lp, stats):  # zero the residual branches of layer 0 only
        if key != "0":
            return lp
        lp = jax.tree.map(lambda w: w, lp)
        lp["self_attn"]["o_proj"] = jnp.zeros_like(lp["self_attn"]["o_proj"])
        lp["mlp"]["down_proj"] = jnp.zeros_like(lp["mlp"]["down_proj"])
        return lp

    new_params, stats = calibrate.sequential(CFG, params, tokens, ("sq_norm",), make_identity)
    x = calibrate.embed_tokens(CFG, params, tokens)  # layer 0 is now the identity: layer 1 sees embeddings
    a = np.asarray(rms_norm(jnp.asarray(x), params["layers"]["1"]["input_layernorm"], CFG.rms_norm_eps))
    np.testing.assert_allclose(stats["1"]["sq_norm"]["attn"], (a * a).sum((0, 1)), rtol=1e-5)
    assert not np.any(np.asarray(new_params["layers"]["0"]["mlp"]["down_proj"]))
    assert new_params["layers"]["1"] is params["layers"]["1"]


def test_block_removal_losses_equal_losses_of_shrunk_models(params, tokens):
    losses, dense = calibrate.block_removal_losses(CFG, params, tokens, 2, batch_size=3)
    assert losses.shape == (2,)
    logits = forward(CFG, params, jnp.asarray(tokens))
    logp = jax.nn.log_softmax(logits[:, :-1], -1)
    ref_dense = -float(jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean())
    np.testing.assert_allclose(dense, ref_dense, rtol=1e-5)
    for start in range(2):
        kept = [i for i in range(3) if not start <= i < start + 2]
        cfg2, p2 = shrink(CFG, params, "layers", kept)
        np.testing.assert_allclose(losses[start], calibrate.lm_loss(cfg2, p2, tokens), rtol=1e-5)


def test_nan_in_statistics_is_a_clear_error(params, tokens):
    bad = jax.tree.map(lambda w: w, params)
    bad["layers"]["1"]["mlp"]["up_proj"] = bad["layers"]["1"]["mlp"]["up_proj"].at[0, 0].set(jnp.nan)
    with pytest.raises(calibrate.CalibrationError, match="layer 1: statistic .*down.* NaN or Inf"):
        calibrate.sequential(CFG, bad, tokens, ("sq_norm",))


def test_calibration_tokens(tmp_path):
    data = tmp_path / "data"
    chunks = [np.arange(100, dtype=np.int32) % 50]
    write_data_dir(str(data), {"train": chunks, "validation": chunks}, vocab_size=64, eos_id=0)
    toks = calibrate.calibration_tokens(str(data), samples=3, seq_len=20)
    assert toks.shape == (3, 20) and toks.dtype == np.int32
    np.testing.assert_array_equal(toks.reshape(-1), chunks[0][:60])
    with pytest.raises(calibrate.CalibrationError, match=r"needs 8 x 20 = 160 tokens, the train split has 100"):
        calibrate.calibration_tokens(str(data), samples=8, seq_len=20)


def test_calibration_taps_come_from_the_models_blockwise_layer(params, tokens):
    """One decoder-layer implementation: the taps are the forward pass's own, and with queries in blocks
    (what long calibration sequences use) they equal full attention's."""
    x = jnp.asarray(calibrate.embed_tokens(CFG, params, tokens))  # [8, 16, D]
    lp = params["layers"]["0"]
    y_full, full = model.layer_taps(CFG, lp, x, block=None)
    y_block, blocked = model.layer_taps(CFG, lp, x, block=4)  # 4 blocks of 4 queries
    np.testing.assert_allclose(y_block, y_full, rtol=1e-5, atol=1e-6)
    for name in full:
        np.testing.assert_allclose(blocked[name], full[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(y_full, layer_forward(CFG, lp, x))  # the same ops as the forward pass
