"""Tests run on 8 fake CPU devices, with no network and no accelerator."""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402  (environment first, then anything that may import jax)

TINY_HF = dict(
    vocab_size=211,
    hidden_size=48,
    intermediate_size=72,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=128,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)

# The model of the train tests (a vocabulary is each module's own): 2 layers of 32, small enough to run steps
TRAIN_HF = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
)


@pytest.fixture(scope="module")
def params(request):
    """Random params of the test module's `CFG`, from its `SEED` (default 0)."""
    import jax

    from prunejax.model import init_params

    return init_params(request.module.CFG, jax.random.key(getattr(request.module, "SEED", 0)))


@pytest.fixture(scope="module")
def tokens(request):
    """Random int32 token ids [N, L] of the module's `TOKENS_SHAPE` (default 4 x 16) below its `CFG`'s vocab."""
    import numpy as np

    module = request.module
    rng = np.random.default_rng(getattr(module, "SEED", 0))
    return rng.integers(0, module.CFG.vocab_size, getattr(module, "TOKENS_SHAPE", (4, 16))).astype(np.int32)


@pytest.fixture
def make_hf_model(tmp_path):
    """Save a random tiny transformers Llama (float32) to a temp dir: returns (dir, torch model)."""
    import torch
    import transformers

    counter = iter(range(1000))

    def make(dtype=None, **overrides):
        cfg = transformers.LlamaConfig(**{**TINY_HF, **overrides})
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(cfg).eval()
        with torch.no_grad():  # HF initializes norms to ones; randomize so norm weights are tested too
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.uniform_(0.5, 1.5)
        path = tmp_path / f"hf{next(counter)}"
        if dtype is not None:
            model = model.to(getattr(torch, dtype))
        model.save_pretrained(path)
        return str(path), model

    return make
