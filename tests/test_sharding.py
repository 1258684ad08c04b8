import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from prunejax import hf, model, sharding, tree
from prunejax.config import TINY


def test_eight_fake_devices():
    assert len(jax.devices()) == 8


def test_mesh_fills_remaining_axis():
    mesh = sharding.make_mesh(data=-1, fsdp=2, tp=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tp": 2}
    with pytest.raises(ValueError, match="needs 16 devices, 8 available"):
        sharding.make_mesh(data=4, fsdp=2, tp=2)


def test_parse_mesh_spells_make_mesh_sizes():
    assert dict(sharding.parse_mesh("data=2,fsdp=2,tp=2").shape) == {"data": 2, "fsdp": 2, "tp": 2}
    assert dict(sharding.parse_mesh("data=-1").shape) == {"data": 8, "fsdp": 1, "tp": 1}
    assert dict(sharding.parse_mesh("fsdp=4").shape) == {"data": 2, "fsdp": 4, "tp": 1}  # data takes the rest
    assert dict(sharding.parse_mesh("tp=-1").shape) == {"data": 1, "fsdp": 1, "tp": 8}
    for bad, message in [
        ("dp=2", "expected AXIS=INT items, each AXIS once among data, fsdp, tp"),
        ("data=2,data=4", "each AXIS once"),
        ("tp=two", "tp must be an integer, got 'two'"),
        ("fsdp=0", "fsdp must be positive or -1"),
        ("data=3", "needs 3 devices, 8 available"),
    ]:
        with pytest.raises(ValueError, match=message):
            sharding.parse_mesh(bad)


def test_rules_and_visible_fallback(caplog):
    mesh = sharding.make_mesh(data=1, fsdp=2, tp=4)
    assert sharding.partition_spec(("embed", "q_heads", "head_dim"), (64, 4, 16), mesh) == P("fsdp", "tp", None)
    with caplog.at_level(logging.WARNING, logger="prunejax.sharding"):
        spec = sharding.partition_spec(("embed", "mlp"), (64, 170), mesh)  # 170 % 4 != 0 (a pruned FFN)
        sharding.partition_spec(("embed", "mlp"), (64, 170), mesh)
    assert spec == P("fsdp", None)
    assert sum("mlp of size 170" in r.getMessage() for r in caplog.records) == 1  # said once


def test_unknown_parameter_fails_loudly():
    with pytest.raises(KeyError, match="layers/0/mlp/extra_proj"):
        sharding.logical_axes(("layers", "0", "mlp", "extra_proj"))


def test_every_param_has_axes_matching_its_rank():
    params = jax.eval_shape(lambda: model.init_params(TINY, jax.random.key(0)))
    for path, leaf in tree.leaf_paths(params):
        assert len(sharding.logical_axes(path)) == len(leaf.shape), path


def test_sharded_forward_equals_unsharded():
    mesh = sharding.make_mesh(data=2, fsdp=2, tp=2)
    params = model.init_params(TINY, jax.random.key(0))
    toks = jnp.asarray(np.random.RandomState(0).randint(0, TINY.vocab_size, (8, 16)), jnp.int32)
    expected = model.forward(TINY, params, toks)
    sharded = sharding.shard(mesh, params)
    assert sharded["layers"]["0"]["mlp"]["gate_proj"].sharding.spec == P("fsdp", "tp")
    fwd = jax.jit(lambda p, t: model.forward(TINY, p, t))
    out = fwd(sharded, jax.device_put(toks, sharding.batch_sharding(mesh)))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_load_places_each_tensor_on_its_sharding(make_hf_model):
    path, _ = make_hf_model()  # hidden 48, 6 q-heads, 2 kv-heads, FFN 72
    mesh = sharding.make_mesh(data=2, fsdp=2, tp=2)
    cfg, params = hf.load(path, place=sharding.placer(mesh))
    assert params["layers"]["0"]["self_attn"]["k_proj"].sharding.spec == P("fsdp", "tp", None)
    assert params["embed_tokens"].sharding.spec == P(None, "fsdp")  # vocab 211 is odd: replicated
