"""Model invariants. Tolerance policy (float32): 1e-5 absolute for single ops, 1e-4 relative to
the largest logit for whole models; bfloat16 compute is compared loosely, only as a smoke check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prunejax import model
from prunejax.config import TINY, RopeScaling
from prunejax.kernels import attention, cpu


@pytest.fixture(scope="module")
def params():
    return model.init_params(TINY, jax.random.key(0))


def tokens(shape, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, TINY.vocab_size, shape), jnp.int32)


def test_shapes_and_dtype(params):
    logits = model.forward(TINY, params, tokens((2, 7)))
    assert logits.shape == (2, 7, TINY.vocab_size) and logits.dtype == jnp.float32
    assert params["layers"]["0"]["self_attn"]["q_proj"].shape == (64, 4, 16)
    assert params["layers"]["0"]["self_attn"]["o_proj"].shape == (4, 16, 64)


def test_causal(params):
    t = tokens((1, 12))
    changed = t.at[0, 8].set((t[0, 8] + 1) % TINY.vocab_size)
    a, b = model.forward(TINY, params, t), model.forward(TINY, params, changed)
    np.testing.assert_allclose(a[0, :8], b[0, :8], atol=1e-5)
    assert np.abs(a[0, 8:] - b[0, 8:]).max() > 1e-3


def test_jit_equals_eager_and_remat(params):
    t = tokens((2, 9))
    eager = model.forward(TINY, params, t)
    jitted = jax.jit(lambda p, x: model.forward(TINY, p, x))(params, t)
    remat = jax.jit(lambda p, x: model.forward(TINY, p, x, remat=True))(params, t)
    np.testing.assert_allclose(jitted, eager, atol=1e-5)
    np.testing.assert_allclose(remat, eager, atol=1e-5)


def test_layerwise_pieces_compose_to_forward(params):
    t = tokens((2, 6))
    x = model.embed(TINY, params, t)
    for i in range(TINY.num_hidden_layers):
        x = model.layer_forward(TINY, params["layers"][str(i)], x)
    np.testing.assert_allclose(model.head(TINY, params, x), model.forward(TINY, params, t), atol=1e-5)


def test_bf16_compute_close(params):
    t = tokens((1, 8))
    full = model.forward(TINY, params, t)
    half = model.forward(TINY, params, t, dtype=jnp.bfloat16)
    assert half.dtype == jnp.float32
    assert np.abs(half - full).max() < 0.05 * np.abs(full).max() + 0.05


def test_rope_rotation_is_relative():
    """q·k after RoPE depends on positions only through their difference."""
    rng = np.random.RandomState(0)
    q, k = jnp.asarray(rng.randn(1, 1, 1, 16), jnp.float32), jnp.asarray(rng.randn(1, 1, 1, 16), jnp.float32)

    def score(pq, pk):
        cq, sq = model.rope_tables(TINY, jnp.array([pq]))
        ck, sk = model.rope_tables(TINY, jnp.array([pk]))
        return float(jnp.sum(model.apply_rope(q, cq, sq) * model.apply_rope(k, ck, sk)))

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


def test_llama3_scaling_keeps_high_and_slows_low_frequencies():
    cfg = TINY.replace(rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 64))
    base, scaled = np.asarray(model.rope_inv_freq(TINY)), np.asarray(model.rope_inv_freq(cfg))
    wavelen = 2 * np.pi / base
    assert np.allclose(scaled[wavelen < 64 / 4], base[wavelen < 64 / 4])
    assert np.allclose(scaled[wavelen > 64], base[wavelen > 64] / 8)


def test_blockwise_attention_equals_full_attention_and_its_gradient(params):
    """The `xla` implementation's query blocks (each over only the keys it can see, recomputed in the
    backward pass) give the forward and gradients of attending all queries at once."""
    t = tokens((2, 16))
    full = model.forward(TINY, params, t, attn_block=None, attention="xla")
    blocked = model.forward(TINY, params, t, attn_block=4, attention="xla")
    np.testing.assert_allclose(blocked, full, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda p: model.forward(TINY, p, t, attn_block=4, attention="xla"))(params))
    assert jaxpr.count("remat") == 4  # 4 blocks, each rematerialized, in the one scanned layer body

    def loss(p, block):
        return jnp.mean(model.forward(TINY, p, t, attn_block=block, attention="xla") ** 2)

    g_full = jax.grad(loss)(params, None)
    g_block = jax.grad(loss)(params, 4)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_block), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-6)


def test_chunked_token_nll_equals_full_log_softmax(params):
    t = tokens((2, 16))
    targets = tokens((2, 16), seed=1)
    logp = jax.nn.log_softmax(model.forward(TINY, params, t), axis=-1)
    expected = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    for chunk in (None, 4):
        got = model.token_nll(TINY, params, t, targets, chunk=chunk, attn_block=8)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    g1 = jax.grad(lambda p: model.token_nll(TINY, p, t, targets, chunk=None).mean())(params)
    g2 = jax.grad(lambda p: model.token_nll(TINY, p, t, targets, chunk=4, remat=True).mean())(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-6)


@pytest.mark.parametrize("n_in", [1, 2])
def test_cpu_projection_and_its_gradient_equal_the_tensordot(n_in):
    """`project`'s CPU lowering (one rank-2 matmul with a written-out backward) computes what the
    tensordot the accelerators run computes: the product, and the gradients of x and w."""
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(3, 5, 4, 6) if n_in == 2 else rng.randn(3, 20, 6), jnp.float32)
    w = jnp.asarray(rng.randn(*x.shape[x.ndim - n_in :], 7, 2), jnp.float32)
    cot = jnp.asarray(rng.randn(*x.shape[: x.ndim - n_in], 7, 2), jnp.float32)

    def value_and_grads(on_cpu):
        y, pull = jax.vjp(lambda a, b: model.project(a, b, n_in, "cpu" if on_cpu else "xla"), x, w)
        return (y, *pull(cot))

    for fast, ref in zip(value_and_grads(True), value_and_grads(False), strict=True):
        assert fast.shape == ref.shape
        np.testing.assert_allclose(fast, ref, atol=1e-5)
    y = value_and_grads(True)[0]  # and the product is the product, not both sides wrong the same way
    np.testing.assert_allclose(y, np.tensordot(np.asarray(x), np.asarray(w), n_in), atol=1e-5)


@pytest.mark.parametrize("offset,keys", [(0, 12), (4, 16)])
def test_cpu_attention_and_its_gradient_equal_the_autodiff_attention(offset, keys):
    """The CPU attention's written-out backward (probabilities recomputed from the log-sum-exp, keys-major)
    gives the outputs and q/k/v gradients of plain softmax attention differentiated by JAX, for queries
    that start at `offset` (a later block of blockwise attention) over all `keys`."""
    rng = np.random.RandomState(1)
    b, kv, g, length, h = 2, 2, 3, keys - offset, 8
    q = jnp.asarray(rng.randn(b, kv, g, length, h), jnp.float32)
    k, v = (jnp.asarray(rng.randn(b, kv, keys, h), jnp.float32) for _ in range(2))
    cot = jnp.asarray(rng.randn(b, kv, g, length, h), jnp.float32)

    def value_and_grads(on_cpu):
        attend = cpu.attend if on_cpu else attention.attend_xla
        out, pull = jax.vjp(lambda q, k, v: attend(q, k, v, offset), q, k, v)
        return (out, *pull(cot))

    fast, ref = value_and_grads(True), value_and_grads(False)
    for a, r in zip(fast, ref, strict=True):
        np.testing.assert_allclose(a, r, atol=1e-5)
    # and the first query row attends to exactly the offset + 1 keys up to its position
    probs = jax.nn.softmax(jnp.einsum("BKGLH,BKSH->BKGLS", q, k)[:, :, :, 0, : offset + 1] / np.sqrt(h), axis=-1)
    np.testing.assert_allclose(
        fast[0][:, :, :, 0], jnp.einsum("BKGS,BKSH->BKGH", probs, v[:, :, : offset + 1]), atol=1e-5
    )


@pytest.mark.parametrize("offset,length,keys", [(0, 10, 10), (4, 12, 16), (0, 8, 8)])
def test_cpu_attention_in_causal_blocks_equals_attending_all_queries_at_once(monkeypatch, offset, length, keys):
    """Blocks of queries over only the keys each can see (here 4 per block; 10 queries leave a short
    last block) give the outputs and q/k/v gradients of the CPU attention over every key at once."""
    rng = np.random.RandomState(2)
    b, kv, g, h = 2, 2, 2, 8
    q = jnp.asarray(rng.randn(b, kv, g, length, h), jnp.float32)
    k, v = (jnp.asarray(rng.randn(b, kv, keys, h), jnp.float32) for _ in range(2))
    cot = jnp.asarray(rng.randn(b, kv, g, length, h), jnp.float32)
    monkeypatch.setattr(cpu, "CAUSAL_MAX_BLOCKS", 8)

    def value_and_grads(block):
        monkeypatch.setattr(cpu, "CAUSAL_BLOCK", block)
        out, pull = jax.vjp(lambda q, k, v: cpu.attend(q, k, v, offset), q, k, v)
        return (out, *pull(cot))

    blocked = value_and_grads(4)
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: cpu.attend(q, k, v, offset))(q, k, v))
    assert jaxpr.count("custom_vjp_call") == -(-length // 4)  # one CPU attention per block of 4 queries
    for a, r in zip(blocked, value_and_grads(0), strict=True):
        np.testing.assert_allclose(a, r, atol=1e-5)


# ---- gates (the module docstring's multipliers, which Sheared-LLaMA trains) ------------------------------
def _ones_gates(cfg):
    n = cfg.num_hidden_layers
    return {
        "layers": jnp.ones((n,)),
        "heads": jnp.ones((n, cfg.num_key_value_heads)),
        "ffn": jnp.ones((n, cfg.intermediate_size)),
        "hidden": jnp.ones((cfg.hidden_size,)),
    }


def _scaled_weights(cfg, params, z):
    """The plain model's weights computing what gates `z` compute when no hidden gate is zero: each gate
    multiplied into the weights that write its unit's output."""
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    h_D = z["hidden"]
    layers = {}
    for i in range(cfg.num_hidden_layers):
        lp = params["layers"][str(i)]
        z_N = jnp.repeat(z["heads"][i], group) * z["layers"][i]
        o_proj = lp["self_attn"]["o_proj"] * z_N[:, None, None] * h_D
        down_proj = lp["mlp"]["down_proj"] * (z["ffn"][i] * z["layers"][i])[:, None] * h_D
        layers[str(i)] = {
            **lp,
            "self_attn": {**lp["self_attn"], "o_proj": o_proj},
            "mlp": {**lp["mlp"], "down_proj": down_proj},
        }
    return {**params, "embed_tokens": params["embed_tokens"] * h_D, "layers": layers}


@pytest.mark.parametrize("impl", ["cpu", "xla"])
def test_all_open_gates_are_the_plain_model(params, impl):
    t, targets = tokens((2, 16)), tokens((2, 16), seed=1)
    ones = _ones_gates(TINY)
    plain = model.forward(TINY, params, t, attention=impl)
    np.testing.assert_allclose(model.forward(TINY, params, t, attention=impl, gates=ones), plain, atol=1e-5)
    np.testing.assert_allclose(
        model.token_nll(TINY, params, t, targets, chunk=4, attention=impl, gates=ones),
        model.token_nll(TINY, params, t, targets, chunk=4, attention=impl),
        atol=1e-5,
    )


@pytest.mark.parametrize("impl", ["cpu", "xla"])
def test_zero_gates_remove_their_units(params, impl):
    """Closing kv-group 0 of layer 0, three FFN neurons of layer 1, all of layer 2 and four hidden channels
    gives the logits of the model with those heads' and neurons' output weights zeroed, layer 2 deleted and
    the four channels deleted from every weight."""
    group = TINY.num_attention_heads // TINY.num_key_value_heads
    neurons, channels = [3, 50, 100], [0, 7, 33, 63]
    z = _ones_gates(TINY)
    z["heads"] = z["heads"].at[0, 0].set(0.0)
    z["ffn"] = z["ffn"].at[1, jnp.array(neurons)].set(0.0)
    z["layers"] = z["layers"].at[2].set(0.0)
    z["hidden"] = z["hidden"].at[jnp.array(channels)].set(0.0)

    keep = np.setdiff1d(np.arange(TINY.hidden_size), channels)
    ref = jax.tree.map(np.array, params)
    ref["layers"]["0"]["self_attn"]["o_proj"][:group] = 0.0
    ref["layers"]["1"]["mlp"]["down_proj"][neurons] = 0.0
    ref["layers"] = {str(new): ref["layers"][old] for new, old in enumerate(("0", "1", "3"))}
    ref["embed_tokens"], ref["norm"], ref["lm_head"] = (
        ref["embed_tokens"][:, keep],
        ref["norm"][keep],
        ref["lm_head"][keep],
    )
    for lp in ref["layers"].values():
        for name in ("q_proj", "k_proj", "v_proj"):
            lp["self_attn"][name] = lp["self_attn"][name][keep]
        lp["self_attn"]["o_proj"] = lp["self_attn"]["o_proj"][..., keep]
        lp["mlp"]["gate_proj"], lp["mlp"]["up_proj"] = lp["mlp"]["gate_proj"][keep], lp["mlp"]["up_proj"][keep]
        lp["mlp"]["down_proj"] = lp["mlp"]["down_proj"][:, keep]
        lp["input_layernorm"] = lp["input_layernorm"][keep]
        lp["post_attention_layernorm"] = lp["post_attention_layernorm"][keep]
    ref_cfg = TINY.replace(num_hidden_layers=3, hidden_size=keep.size)

    t = tokens((2, 16))
    want = model.forward(ref_cfg, ref, t, attention=impl)
    got = model.forward(TINY, params, t, attention=impl, gates=z)
    assert np.abs(np.asarray(got - want)).max() <= 1e-4 * np.abs(np.asarray(want)).max()


@pytest.mark.parametrize("impl", ["cpu", "xla"])
def test_soft_gates_and_their_gradients_equal_scaled_weights(params, impl):
    """Gates in (0.2, 1) compute what the plain model computes with each gate multiplied into its unit's
    output weights, and the gradient of the loss w.r.t. every gate is the one through those weights (the
    derivative Sheared's log-alphas learn from), through the scanned (xla) or looped (cpu) layers with remat."""
    n, k, f, d = TINY.num_hidden_layers, TINY.num_key_value_heads, TINY.intermediate_size, TINY.hidden_size
    shapes = {"layers": (n,), "heads": (n, k), "ffn": (n, f), "hidden": (d,)}
    z = {g: jax.random.uniform(jax.random.key(i), s, minval=0.2, maxval=1.0) for i, (g, s) in enumerate(shapes.items())}
    t, targets = tokens((2, 16)), tokens((2, 16), seed=1)

    def gated(z):
        return model.token_nll(TINY, params, t, targets, remat=True, attention=impl, gates=z).mean()

    def direct(z):
        return model.token_nll(TINY, _scaled_weights(TINY, params, z), t, targets, attention=impl).mean()

    (got, g_got), (want, g_want) = jax.value_and_grad(gated)(z), jax.value_and_grad(direct)(z)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g in shapes:
        assert np.abs(np.asarray(g_want[g])).max() > 0
        np.testing.assert_allclose(g_got[g], g_want[g], atol=1e-5 * np.abs(np.asarray(g_want[g])).max(), err_msg=g)
