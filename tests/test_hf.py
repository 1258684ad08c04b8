"""HF parity and checkpoint I/O. Whole-model float32 tolerance: 1e-4 relative to the largest logit."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from prunejax import hf, model
from prunejax.hf import CheckpointError


def logits_torch(m, toks):
    with torch.no_grad():
        return m(torch.tensor(toks)).logits.float().numpy()


def assert_logits_close(ours, ref):
    ours = np.asarray(ours)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


TOKENS = np.random.RandomState(0).randint(0, 211, (2, 33))
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),  # GQA 6/2, untied, head_dim 8 != 48/6
        dict(num_key_value_heads=1),  # MQA
        dict(num_key_value_heads=6, head_dim=None),  # MHA, head_dim derived = 8
        dict(tie_word_embeddings=True),
        dict(rope_scaling=LLAMA3_ROPE, rope_theta=500000.0),
        dict(head_dim=12, num_attention_heads=4, num_key_value_heads=2),  # head_dim * heads != hidden
    ],
    ids=["gqa", "mqa", "mha", "tied", "llama3-rope", "head-dim-12"],
)
def test_logit_parity_with_transformers(make_hf_model, overrides):
    path, ref_model = make_hf_model(**{k: v for k, v in overrides.items() if v is not None})
    cfg, params = hf.load(path)
    assert_logits_close(model.forward(cfg, params, jnp.asarray(TOKENS)), logits_torch(ref_model, TOKENS))


def test_round_trip_is_lossless(make_hf_model, tmp_path):
    path, ref_model = make_hf_model(rope_scaling=LLAMA3_ROPE)
    cfg, params = hf.load(path)
    out = hf.save(str(tmp_path / "out"), cfg, params, provenance={"note": "round trip"})
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ref_state, back_state = ref_model.state_dict(), back.state_dict()
    assert ref_state.keys() == back_state.keys()
    for name, t in ref_state.items():
        assert torch.equal(t, back_state[name]), name
    np.testing.assert_array_equal(logits_torch(back, TOKENS), logits_torch(ref_model, TOKENS))
    cfg2, params2 = hf.load(out)
    assert cfg2 == cfg
    assert json.load(open(os.path.join(out, "prunejax.json")))["note"] == "round trip"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reads_half_precision(make_hf_model, dtype):
    path, ref_model = make_hf_model(dtype=dtype)
    cfg, params = hf.load(path)
    assert cfg.torch_dtype == dtype and params["norm"].dtype == jnp.float32
    np.testing.assert_array_equal(
        np.asarray(params["embed_tokens"]), ref_model.model.embed_tokens.weight.detach().float().numpy()
    )


def test_sharded_checkpoint_round_trip(make_hf_model, tmp_path):
    path, ref_model = make_hf_model()
    cfg, params = hf.load(path)
    out = hf.save(str(tmp_path / "sharded"), cfg, params, max_shard_bytes=20_000)
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(files) > 2 and os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_array_equal(logits_torch(back, TOKENS), logits_torch(ref_model, TOKENS))
    _, params2 = hf.load(out)
    np.testing.assert_array_equal(params2["lm_head"], params["lm_head"])


def test_masks_saved_under_weight_names(make_hf_model, tmp_path):
    path, _ = make_hf_model()
    cfg, params = hf.load(path)
    w = params["layers"]["1"]["mlp"]["down_proj"]
    mask = np.asarray(w) > 0
    params["layers"]["1"]["mlp"]["down_proj"] = jnp.where(mask, w, 0.0)
    masks = {"layers": {"1": {"mlp": {"down_proj": jnp.asarray(mask)}}}}
    out = hf.save(str(tmp_path / "sparse"), cfg, params, masks)
    from safetensors.numpy import load_file

    stored = load_file(os.path.join(out, hf.MASKS_FILE))
    assert list(stored) == ["model.layers.1.mlp.down_proj.weight"]
    np.testing.assert_array_equal(stored["model.layers.1.mlp.down_proj.weight"], mask.T)
    loaded = hf.load_masks(out, cfg)
    np.testing.assert_array_equal(loaded["layers"]["1"]["mlp"]["down_proj"], mask)
    record = hf.load_provenance(out)
    assert record["sparsity"]["mask_sparsity"] == pytest.approx(1 - mask.mean())
    transformers.AutoModelForCausalLM.from_pretrained(out)  # the extra file does not disturb loading
    os.remove(os.path.join(out, hf.MASKS_FILE))  # deleted by hand: the model would load dense and regrow
    with pytest.raises(hf.CheckpointError, match=r"masks.safetensors is missing, but prunejax.json records a sparse"):
        hf.load_masks(out, cfg)


# ---- bad input -------------------------------------------------------------------------------
def _rewrite(path, name, fn):
    from safetensors.numpy import load_file, save_file

    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    fn(tensors, name)
    save_file(tensors, file, metadata={"format": "pt"})
    return file


def test_truncated_file(make_hf_model):
    path, _ = make_hf_model()
    file = os.path.join(path, "model.safetensors")
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) // 2)
    with pytest.raises(CheckpointError, match="model.safetensors.*(truncated|unreadable)"):
        hf.load(path)


def test_missing_weights_file(make_hf_model):
    path, _ = make_hf_model()
    os.remove(os.path.join(path, "model.safetensors"))
    torch.save({}, os.path.join(path, "pytorch_model.bin"))
    with pytest.raises(CheckpointError, match="pickle formats are never loaded"):
        hf.load(path)


def test_missing_shard_named(make_hf_model, tmp_path):
    path, _ = make_hf_model()
    cfg, params = hf.load(path)
    out = hf.save(str(tmp_path / "sharded"), cfg, params, max_shard_bytes=20_000)
    victim = sorted(f for f in os.listdir(out) if f.startswith("model-"))[1]
    os.remove(os.path.join(out, victim))
    with pytest.raises(CheckpointError, match=f"{victim}: file is missing"):
        hf.load(out)


def test_wrong_shape_named(make_hf_model):
    path, _ = make_hf_model()
    name = "model.layers.1.mlp.up_proj.weight"
    _rewrite(path, name, lambda t, n: t.__setitem__(n, t[n][:-1]))
    with pytest.raises(CheckpointError, match=rf"{name} has shape \(71, 48\), but config.json implies \(72, 48\)"):
        hf.load(path)


def test_missing_key_named(make_hf_model):
    path, _ = make_hf_model()
    name = "model.layers.0.self_attn.v_proj.weight"
    _rewrite(path, name, lambda t, n: t.pop(n))
    with pytest.raises(CheckpointError, match=f"missing tensor.*{name}"):
        hf.load(path)


def test_config_contradicting_weights(make_hf_model):
    path, _ = make_hf_model()
    cfg_file = os.path.join(path, "config.json")
    d = json.load(open(cfg_file))
    d["num_hidden_layers"] = 1
    json.dump(d, open(cfg_file, "w"))
    with pytest.raises(CheckpointError, match="unexpected tensor.*model.layers.1"):
        hf.load(path)


def test_unknown_rope_type(make_hf_model):
    path, _ = make_hf_model()
    cfg_file = os.path.join(path, "config.json")
    d = json.load(open(cfg_file))
    d["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    json.dump(d, open(cfg_file, "w"))
    with pytest.raises(Exception, match="config.json: unknown rope_type 'dynamic'"):
        hf.load(path)


def test_save_refuses_to_clobber_and_is_atomic(make_hf_model, tmp_path):
    path, _ = make_hf_model()
    cfg, params = hf.load(path)
    out = str(tmp_path / "out")
    hf.save(out, cfg, params)
    with pytest.raises(FileExistsError):
        hf.save(out, cfg, params)
    params["norm"] = params["norm"][:-1]  # invalid: the failed save must leave the old dir intact
    with pytest.raises(CheckpointError, match="norm"):
        hf.save(out, cfg, params, overwrite=True)
    assert hf.load(out)[0] == cfg
    assert [f for f in os.listdir(tmp_path) if f.startswith(".out")] == []


def test_every_from_pretrained_refuses_remote_code():
    """Every `from_pretrained` call in the package passes trust_remote_code=False (read from the source)."""
    import ast
    import glob

    calls = []
    for file in glob.glob(os.path.join(os.path.dirname(hf.__file__), "**", "*.py"), recursive=True):
        for node in ast.walk(ast.parse(open(file).read())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("trust_remote_code"), ast.Constant) and kw["trust_remote_code"].value is False
                calls.append((f"{file}:{node.lineno}", ok))
    assert len(calls) >= 3 and all(ok for _, ok in calls), calls


def test_a_model_dir_that_reads_back_wrong_is_never_committed(make_hf_model, tmp_path, monkeypatch):
    cfg, params = hf.load(make_hf_model()[0])
    write = hf._write_sharded

    def corrupting(out_dir, tensors, base, max_shard_bytes):  # the disk returns other bytes than were written
        write(
            out_dir, [(n, np.zeros_like(t)) if n.endswith("q_proj.weight") else (n, t) for n, t in tensors], base, 2**40
        )

    monkeypatch.setattr(hf, "_write_sharded", corrupting)
    with pytest.raises(CheckpointError, match=r"q_proj.weight reads back differently"):
        hf.save(str(tmp_path / "out"), cfg, params)
    assert not (tmp_path / "out").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]
    monkeypatch.setattr(hf, "_write_sharded", write)
    hf.save(str(tmp_path / "out"), cfg, params)  # the real writer passes its own check
    assert hf.load(str(tmp_path / "out"))[0] == cfg
