"""The peer of one `prunejax train` run, in transformers+torch: the same work from process start to the
final model, so `whole_run.py` can time the two side by side.

  python benchmarks/torch_train.py (--model-config SHAPE.yaml | --init MODEL_DIR) --data DATA_DIR \
      --tokens 150k --out DIR [--batch 16 --seq 128 --peak-lr 3e-3 --val-every 50 --val-batches 4 --ckpt-every 50]

What it does, as prunejax train does with configs/train/tiny.yaml: random init of the shape (a
model YAML/JSON of HF LlamaConfig keys; HF's init, not prunejax's) or the weights of a MODEL_DIR;
windows of seq+1 tokens at stride seq from the DATA_DIR's train split in a seeded shuffled order
(numpy's; with --prunejax-order the very batches `prunejax train` reads, from its own pipeline, so
that from the same --init the two loss curves can be compared); float32 forward, cross-entropy,
backward, global-norm clip 1.0, AdamW (0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only) under
the same warmup+cosine schedule; validation loss on the first val_batches x batch windows of the
validation split every val_every steps and at the end; a checkpoint (model and optimizer moments,
safetensors) every ckpt_every steps and at the end; the final model as safetensors + config.json.
Prints one JSON line: steps, the last training loss, the validation loss, every step's loss.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np


def lr_at(count: int, peak: float, final_frac: float, warm: int, total: int) -> float:
    """prunejax.train.optim.schedule, in plain Python."""
    if count < warm:
        return peak * (count + 1) / max(warm, 1)
    frac = min(max((count - warm + 1) / max(1, total - warm), 0.0), 1.0)
    final = peak * final_frac
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * frac))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-config", help="random init of this shape")
    source.add_argument("--init", help="MODEL_DIR (safetensors) to start from")
    p.add_argument("--data", required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--peak-lr", type=float, default=3e-3)
    p.add_argument("--warmup-frac", type=float, default=0.05)
    p.add_argument("--final-lr-frac", type=float, default=0.1)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--val-batches", type=int, default=4)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prunejax-order", action="store_true", help="read the batches prunejax's pipeline gives")
    args = p.parse_args()

    import safetensors.torch
    import torch
    import transformers
    import yaml

    from prunejax.config import parse_tokens  # the budget read as `prunejax train --tokens` reads it

    with open(os.path.join(args.data, "meta.json")) as f:
        meta = json.load(f)
    dtype = np.dtype(meta["dtype"])

    def split(name: str) -> np.ndarray:
        return np.memmap(os.path.join(args.data, f"{name}-00000.bin"), dtype=dtype, mode="r")

    train, val = split("train"), split("validation")
    n_windows = (len(train) - 1) // args.seq
    steps = parse_tokens(args.tokens) // (args.batch * args.seq)
    order = np.random.default_rng(args.seed).permutation(n_windows)

    def windows(tokens: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        rows = [np.asarray(tokens[i * args.seq : i * args.seq + args.seq + 1], np.int64) for i in idx]
        return torch.from_numpy(np.stack(rows))

    if args.prunejax_order:
        from prunejax.data.pipeline import BatchSpec, WindowSource, train_dataset, train_iterator
        from prunejax.data.store import TokenStore

        source = WindowSource(TokenStore(args.data), "train", 0, None, args.seq)
        batches = train_iterator(train_dataset(source, BatchSpec(args.batch, 1, 0, 1), args.seed, steps))

        def next_batch(step: int) -> torch.Tensor:
            b = next(batches)
            rows = np.concatenate([b["inputs"][0], b["targets"][0][:, -1:]], axis=1)
            return torch.from_numpy(rows.astype(np.int64))

    else:

        def next_batch(step: int) -> torch.Tensor:
            return windows(train, order[np.arange((step - 1) * args.batch, step * args.batch) % n_windows])

    torch.manual_seed(args.seed)
    if args.init:
        model = transformers.LlamaForCausalLM.from_pretrained(
            args.init, torch_dtype=torch.float32, trust_remote_code=False, use_safetensors=True
        )
    else:
        with open(args.model_config) as f:
            shape = yaml.safe_load(f)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape, torch_dtype="float32"))
    model = model.float().train()
    decay = [q for q in model.parameters() if q.ndim >= 2]
    rest = [q for q in model.parameters() if q.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=args.peak_lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    warm = max(1, round(args.warmup_frac * steps)) if args.warmup_frac > 0 else 0
    val_batches = [windows(val, np.arange(b * args.batch, (b + 1) * args.batch)) for b in range(args.val_batches)]
    os.makedirs(args.out, exist_ok=True)

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=batch[:, :-1]).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    def validate() -> float:
        model.eval()
        with torch.no_grad():
            value = float(np.mean([loss_of(b).item() for b in val_batches]))
        model.train()
        return value

    def checkpoint(step: int) -> None:
        tensors = {f"model/{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
        for i, q in enumerate(decay + rest):
            s = opt.state[q]
            tensors[f"opt/{i}/exp_avg"], tensors[f"opt/{i}/exp_avg_sq"] = s["exp_avg"], s["exp_avg_sq"]
        path = os.path.join(args.out, f"ckpt-{step}.safetensors")
        safetensors.torch.save_file(tensors, path + ".tmp", metadata={"step": str(step)})
        os.replace(path + ".tmp", path)

    train_loss, val_loss, losses = float("nan"), float("nan"), []
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, args.peak_lr, args.final_lr_frac, warm, steps)
        loss = loss_of(next_batch(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_loss = loss.item()  # read every step, as prunejax's loop checks each loss for NaN/Inf
        losses.append(train_loss)
        if not math.isfinite(train_loss):
            raise SystemExit(f"loss {train_loss} at step {step}")
        if args.val_every and step % args.val_every == 0 and step < steps:
            val_loss = validate()
        if args.ckpt_every and step % args.ckpt_every == 0:
            checkpoint(step)
    val_loss = validate()
    if not args.ckpt_every or steps % args.ckpt_every:
        checkpoint(steps)
    final = os.path.join(args.out, "final")
    model.save_pretrained(final, safe_serialization=True)
    print(json.dumps({"steps": steps, "loss": train_loss, "val_loss": val_loss, "losses": losses}))


if __name__ == "__main__":
    main()
