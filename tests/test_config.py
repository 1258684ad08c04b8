import argparse
import json

import jax
import pytest

from prunejax import config as C
from prunejax.model import init_params


def _count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def test_llama_3_1_8b_parameter_count_from_eval_shape():
    shapes = jax.eval_shape(lambda: init_params(C.LLAMA_3_1_8B, jax.random.key(0)))
    assert _count(shapes) == 8_030_261_248
    assert C.LLAMA_3_1_8B.num_params() == 8_030_261_248


def test_llama_3_1_70b_parameter_count_from_eval_shape():
    shapes = jax.eval_shape(lambda: init_params(C.LLAMA_3_1_70B, jax.random.key(0)))
    assert _count(shapes) == C.LLAMA_3_1_70B.num_params() == 70_553_706_496  # Meta's published count
    assert C.LLAMA_3_1_70B.head_dim == 128 and C.LLAMA_3_1_70B.rope_scaling == C.LLAMA_3_1_8B.rope_scaling


@pytest.mark.parametrize("name", ["llama-3.2-1b", "smollm2-135m", "tiny"])
def test_presets_count_matches_eval_shape(name):
    cfg = C.preset(name)
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    assert _count(shapes) == cfg.num_params()


def test_published_sizes():
    assert C.LLAMA_3_2_1B.num_params() == 1_235_814_400
    assert C.SMOLLM2_135M.num_params() == 134_515_008


def test_flops_hand_expansion():
    cfg = C.TINY  # D=64, F=176, 4 layers, N=4, K=2, H=16, V=512
    per_layer = 64 * (4 * 16) * 2 + 64 * (2 * 16) * 2 + 3 * 64 * 176  # q,o + k,v + gate,up,down
    assert cfg.layer_linear_params() == per_layer == 46_080
    seq = 32
    attn = 2 * 2 * 4 * 64 * (seq + 1) / 2  # QK^T and AV, causal average of (seq+1)/2 keys
    fwd = 2 * (4 * per_layer + 64 * 512) + attn
    assert cfg.flops_per_token(seq) == pytest.approx(fwd)
    assert cfg.flops_per_token(seq, training=True) == pytest.approx(3 * fwd)
    half = 2 * (4 * per_layer * 0.5 + 64 * 512) + attn
    assert cfg.flops_per_token(seq, linear_density=0.5) == pytest.approx(half)


def test_reads_classic_and_transformers5_keys():
    classic = C.LLAMA_3_1_8B.to_hf_dict()
    assert classic["rope_scaling"]["rope_type"] == "llama3"
    assert C.LlamaConfig.from_hf_dict(classic) == C.LLAMA_3_1_8B
    v5 = dict(classic)
    rope = v5.pop("rope_scaling")
    v5["rope_parameters"] = {**rope, "rope_theta": v5.pop("rope_theta")}
    v5["dtype"] = v5.pop("torch_dtype")
    assert C.LlamaConfig.from_hf_dict(v5) == C.LLAMA_3_1_8B


def test_transformers5_default_rope():
    d = C.TINY.to_hf_dict()
    d.pop("rope_scaling")
    d.pop("rope_theta")
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": 1234.0}
    cfg = C.LlamaConfig.from_hf_dict(d)
    assert cfg.rope_theta == 1234.0 and cfg.rope_scaling.rope_type == "default"


def test_contradicting_rope_theta_is_an_error():
    d = {**C.TINY.to_hf_dict(), "rope_parameters": {"rope_type": "default", "rope_theta": 1.0}}
    with pytest.raises(C.ConfigError, match="rope_theta"):
        C.LlamaConfig.from_hf_dict(d)


def test_head_dim_is_kept_explicit():
    cfg = C.TINY.replace(hidden_size=40)
    assert cfg.head_dim == 16 and cfg.q_dim == 64


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "unknown rope_type 'yarn'"),
        ({"hiden_size": 3}, "unknown config key(s): hiden_size"),
        ({"num_key_value_heads": 3}, "not a multiple"),
        ({"model_type": "mistral"}, "not 'llama'"),
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_theta": float("nan")}, "rope_theta must be a finite number, got nan"),
        ({"rms_norm_eps": float("inf")}, "rms_norm_eps must be a finite number, got inf"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": float("inf")}}, "rope_scaling.factor must be a finite"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "foo": 1}}, "unknown rope_scaling key(s): foo"),
    ],
)
def test_bad_configs(change, message, tmp_path):
    d = {**C.TINY.to_hf_dict(), **change}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(C.ConfigError, match=".*".join(map(_escape, message.split("*")))) as e:
        C.LlamaConfig.from_file(path)
    assert str(path) in str(e.value)


def _escape(s: str) -> str:
    import re

    return re.escape(s)


def test_unknown_preset_lists_valid():
    with pytest.raises(C.ConfigError, match="llama-3.1-8b"):
        C.preset("llama-9b")


def test_token_counts_read_like_people_write_them():
    from prunejax.config import ConfigError, parse_tokens, token_arg

    assert [parse_tokens(v) for v in (200000, "2e5", "300k", "1.5M", "50B", "1_000", "0")] == [
        200_000,
        200_000,
        300_000,
        1_500_000,
        50_000_000_000,
        1000,
        0,
    ]
    for bad, message in (("12x", "not a token count"), ("2.5", "whole number"), (-3, "whole number >= 0")):
        with pytest.raises(ConfigError, match=message):
            parse_tokens(bad)
    assert token_arg("64k") == 64_000
    with pytest.raises(argparse.ArgumentTypeError, match="whole number >= 1"):
        token_arg("0")
