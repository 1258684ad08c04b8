"""Where a train step's time goes, prunejax next to transformers+torch on the same model and batch.

  python benchmarks/profile_step.py --shape tiny --batch 16 --seq 128 --repeats 7

The step is cut into the parts both frameworks run, and each part is timed on its own (forward and
backward, on the step's real shapes, jitted in JAX):
  embed      the token embedding lookup and its gradient
  layer      one decoder layer, forward and backward (x the number of layers)
  attention  its softmax attention core alone (q, k, v in; the output out), forward and backward
  mlp        its SwiGLU MLP alone, forward and backward
  head+loss  final norm, LM head and cross-entropy, forward and backward
  optimizer  global-norm clip and AdamW on gradients of the model's shapes
  step       the whole train step (what `prunejax train` runs; torch: the loop body of benchmarks/train_step.py)
"rest" is the step minus the sum of its parts: dispatch between ops, gradient accumulation, and whatever
the parts' boundaries hide (fusion across them makes it negative). Every part's two sides are timed
interleaved, `--repeats` times after a warm-up; medians with min-max, and the load average before and
after. Float32, one CPU device, prunejax's CPU runtime settings (as every `prunejax` verb).
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from protocol import interleaved, load, spread  # noqa: E402
from train_step import jax_stepper, shape_config, torch_stepper  # noqa: E402  (the whole steps, as train_step.py times them)

from prunejax import runtime  # noqa: E402

runtime.tune_cpu_runtime()

Part = Callable[[], None]


def jax_parts(cfg, batch: int, seq: int) -> dict[str, Part]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from prunejax import model
    from prunejax.kernels import attention as attention_kernels
    from prunejax.train import optim
    from prunejax.train import state as state_lib
    from prunejax.train.config import TrainConfig

    tcfg = TrainConfig(seq_len=seq, global_batch=batch, compute_dtype="float32")
    params = state_lib.random_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, seq)), jnp.int32)
    x = jax.random.normal(jax.random.key(1), (batch, seq, cfg.hidden_size), jnp.float32)
    lp = params["layers"]["0"]
    kv, n, h = cfg.num_key_value_heads, cfg.num_attention_heads, cfg.head_dim
    q5 = jax.random.normal(jax.random.key(2), (batch, seq, kv, n // kv, h))
    k4 = jax.random.normal(jax.random.key(3), (batch, seq, kv, h))
    layer = model._layer(cfg, lp)

    def grad_of(f, *args, ints=()):
        """f's gradient in `args`; `ints` (token ids) are arguments too, not constants XLA would fold."""
        g = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a)), argnums=tuple(range(len(args)))))
        return lambda: jax.block_until_ready(g(*args, *ints))

    def embed(table, tokens):
        return jnp.take(table, tokens, axis=0)

    def one_layer(lp, x):
        return model.layer_forward(cfg, lp, x)

    def attention(q, k, v):
        return attention_kernels.causal_attention(q, k, v, "cpu")

    def mlp(mp, x):
        return jnp.einsum("BLF,FD->BLD", layer.mlp.hidden(x), mp["down_proj"])

    def head_loss(hp, x, tokens):
        return model.nll_from_logits(model.head(cfg, hp, x), tokens)

    head_params = {k: v for k, v in params.items() if k != "layers"}
    opt = optim.optimizer(tcfg, 1000)
    opt_state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    def update(grads, opt_state, params):
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return {
        "embed": grad_of(embed, params["embed_tokens"], ints=(tokens,)),
        "layer": grad_of(one_layer, lp, x),
        "attention": grad_of(attention, q5, k4, k4),
        "mlp": grad_of(mlp, lp["mlp"], x),
        "head+loss": grad_of(head_loss, head_params, x, ints=(tokens,)),
        "optimizer": lambda: jax.block_until_ready(update(grads, opt_state, params)),
        "step": jax_stepper(cfg, batch, seq, warmup=1),
    }


def torch_parts(cfg, batch: int, seq: int) -> dict[str, Part]:
    import torch
    import transformers

    hf_cfg = transformers.LlamaConfig(**{**cfg.to_hf_dict(), "torch_dtype": "float32"})
    hf_cfg._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(hf_cfg).float().train()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=g)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    x = torch.randn(batch, seq, cfg.hidden_size, generator=g, requires_grad=True)
    layer = model.model.layers[0]
    pos = torch.arange(seq)[None]
    rope = model.model.rotary_emb(x, pos)
    n, kv, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = torch.randn(batch, n, seq, h, generator=g, requires_grad=True)
    k = torch.randn(batch, kv, seq, h, generator=g, requires_grad=True)
    v = torch.randn(batch, kv, seq, h, generator=g, requires_grad=True)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=3e-4, betas=(0.9, 0.95)
    )

    def backward(out: torch.Tensor) -> None:
        out.sum().backward()

    def embed() -> None:
        backward(model.model.embed_tokens(inputs))

    def one_layer() -> None:
        out = layer(x, position_embeddings=rope, attention_mask=None, position_ids=pos)
        backward(out[0] if isinstance(out, tuple) else out)

    def attention() -> None:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        backward(out)

    def mlp() -> None:
        backward(layer.mlp(x))

    def head_loss() -> None:
        logits = model.lm_head(model.model.norm(x))
        backward(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)))

    for p in model.parameters():
        p.grad = torch.ones_like(p)

    def optimizer() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return {
        "embed": embed,
        "layer": one_layer,
        "attention": attention,
        "mlp": mlp,
        "head+loss": head_loss,
        "optimizer": optimizer,
        "step": torch_stepper(cfg, batch, seq, warmup=1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", help="a preset name or a model YAML/JSON")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    import torch

    cfg = shape_config(args.shape)
    sides = {"jax": jax_parts(cfg, args.batch, args.seq), "torch": torch_parts(cfg, args.batch, args.seq)}
    print(
        f"{args.shape} ({cfg.num_params():,} params), batch {args.batch} x {args.seq}, float32; "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads"
    )
    print(f"before: {load()}")
    medians: dict[str, dict[str, float]] = {"jax": {}, "torch": {}}
    rows = []
    for part in sides["jax"]:
        pair = {name: sides[name][part] for name in sides}
        for _ in range(args.warmup):
            for f in pair.values():
                f()
        times = interleaved(pair, args.repeats)
        for name in sides:
            medians[name][part] = statistics.median(times[name])
        rows.append((part, spread(times["jax"], 1e3, "ms"), spread(times["torch"], 1e3, "ms")))
    print(f"after: {load()}")
    layers = cfg.num_hidden_layers
    print("| part | prunejax | torch | prunejax / torch |")
    print("|---|---|---|---|")
    for part, j, t in rows:
        print(f"| {part} | {j} | {t} | {medians['jax'][part] / medians['torch'][part]:.2f} |")
    for name in sides:
        m = medians[name]
        parts = m["embed"] + layers * m["layer"] + m["head+loss"] + m["optimizer"]
        rest = m["step"] - parts
        print(f"{name}: step {m['step'] * 1e3:.1f} ms = parts {parts * 1e3:.1f} ms + rest {rest * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
