"""Log-likelihoods and perplexity equal transformers+torch on a random tiny Llama; window rules."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from prunejax import hf
from prunejax.evaluate import loglik, perplexity
from prunejax.sharding import make_mesh

CORPUS = (
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. "
    "And God said, Let there be light: and there was light. The quick brown fox jumps over the lazy dog. "
)


def build_tokenizer(out_dir: str) -> None:
    """A byte-level BPE tokenizer (~300 ids) trained on a few sentences, saved as HF files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.save_pretrained(out_dir)


def build_model_dir(out_dir: str, seed: int = 0, max_positions: int = 64) -> str:
    """A random float32 LlamaForCausalLM (GQA, untied head) saved by transformers, tokenizer included."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=max_positions,
        initializer_range=0.2,  # peaked distributions, so argmax and accuracies are not all ties
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(out_dir)
    build_tokenizer(out_dir)
    return out_dir


def torch_logprobs(model_dir: str, tokens: list[int]) -> np.ndarray:
    """log p(tokens[t+1] | tokens[:t+1]) from transformers+torch, float64."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0, :-1].double()
    logp = torch.log_softmax(logits, -1)
    return logp[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])].numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object, object]:
    model_dir = build_model_dir(str(tmp_path_factory.mktemp("tiny")))
    cfg, params = hf.load(model_dir)
    return model_dir, cfg, params


def test_windows_non_overlapping_by_hand() -> None:
    # 10 tokens, L=4: windows [0,4) [4,8) [8,10); first token of each is context only
    np.testing.assert_array_equal(perplexity.windows(10, 4), [[0, 1, 4], [4, 5, 8], [8, 9, 10]])
    # 9 tokens: the last window would hold one token and score nothing, so it is dropped
    np.testing.assert_array_equal(perplexity.windows(9, 4), [[0, 1, 4], [4, 5, 8]])


def test_windows_sliding_scores_every_token_once() -> None:
    np.testing.assert_array_equal(perplexity.windows(10, 4, stride=2), [[0, 1, 4], [2, 4, 6], [4, 6, 8], [6, 8, 10]])
    for n, length, stride in [(37, 8, 3), (8, 8, 1), (100, 16, 16), (5, 16, 4)]:
        scored = np.concatenate([np.arange(f, e) for _, f, e in perplexity.windows(n, length, stride)])
        want = np.arange(1, n) if stride < length else np.setdiff1d(np.arange(1, n), np.arange(0, n, length))
        np.testing.assert_array_equal(np.sort(scored), want)


def test_token_logprobs_equal_torch(tiny) -> None:
    model_dir, cfg, params = tiny
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(2, 40)).astype(np.int32)
    ours, greedy = loglik.token_logprobs(cfg, params, tokens)
    for b in range(2):
        ref = torch_logprobs(model_dir, tokens[b].tolist())
        np.testing.assert_allclose(np.asarray(ours[b]), ref, rtol=1e-4, atol=1e-5)
    assert greedy.shape == (2, 39)


def test_score_spans_match_torch_and_are_order_independent(tiny) -> None:
    model_dir, cfg, params = tiny
    rng = np.random.default_rng(1)
    spans = [
        loglik.Span(tuple(rng.integers(0, cfg.vocab_size, n).tolist()), f) for n, f in [(5, 1), (30, 20), (12, 11)]
    ]
    mesh = make_mesh()  # 8 fake devices: batch sharded over data, padded to 8 rows
    scores = loglik.score_spans(cfg, params, spans, batch_size=2, mesh=mesh)
    for span, score in zip(spans, scores, strict=True):
        ref = torch_logprobs(model_dir, list(span.tokens))[span.first - 1 :]
        assert score.count == len(ref)
        assert math.isclose(score.logprob, ref.sum(), rel_tol=1e-4)


def test_perplexity_equals_torch_windows(tiny) -> None:
    model_dir, cfg, params = tiny
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, 150).astype(np.int32)
    for stride in (None, 10):
        ours = perplexity.stream_nll(cfg, params, tokens, 32, stride=stride, batch_size=2, mesh=make_mesh())
        nlls = []
        for start, first, end in perplexity.windows(len(tokens), 32, stride):
            lp = torch_logprobs(model_dir, tokens[start:end].tolist())
            nlls.append(-lp[first - start - 1 :])
        ref = np.concatenate(nlls)
        assert ours["scored_tokens"] == ref.size
        assert math.isclose(ours["nll"], ref.mean(), rel_tol=1e-4)
        assert math.isclose(ours["perplexity"], math.exp(ref.mean()), rel_tol=1e-4)


def test_text_perplexity_uses_the_model_tokenizer(tiny, tmp_path) -> None:
    from transformers import AutoTokenizer

    model_dir, cfg, params = tiny
    tok = AutoTokenizer.from_pretrained(model_dir)
    text = tmp_path / "a.txt"
    text.write_text(CORPUS * 2)
    result = perplexity.text_perplexity(cfg, params, tok, [str(text)], 16)[str(text)]
    ids = tok(CORPUS * 2)["input_ids"]
    assert result["tokens"] == len(ids)
    assert result["perplexity"] > 1


def test_bad_windows_and_empty_text(tiny, tmp_path) -> None:
    _, cfg, params = tiny
    with pytest.raises(ValueError, match="longer than the model's 64 positions"):
        perplexity.stream_nll(cfg, params, np.arange(100), 65)
    with pytest.raises(ValueError, match="stride"):
        perplexity.stream_nll(cfg, params, np.arange(100), 16, stride=17)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty.txt: the text is empty"):
        perplexity.tokenize_file(None, str(empty))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity.stream_nll(cfg, params, np.arange(1), 16)


def test_validation_loss_on_data_dir(tiny, tmp_path) -> None:
    from prunejax.data.store import write_data_dir

    _, cfg, params = tiny
    rng = np.random.default_rng(3)
    val = rng.integers(0, cfg.vocab_size, 100).astype(np.int32)
    data_dir = write_data_dir(
        str(tmp_path / "data"), {"train": [val[:10]], "validation": [val]}, vocab_size=cfg.vocab_size, eos_id=0
    )
    loss = perplexity.validation_loss(cfg, params, data_dir, 16, max_tokens=64, batch_size=4)
    direct = perplexity.stream_nll(cfg, params, val[:64], 16)["nll"]
    assert loss == pytest.approx(direct, rel=1e-6)
    assert os.path.exists(os.path.join(data_dir, "meta.json"))
