"""One evaluation of one model, as a results.json that records what is needed to compare two honestly."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from prunejax import distributed, hf, storage
from prunejax.evaluate import perplexity, tasks, zeroshot
from prunejax.evaluate.source import load_model
from prunejax.sharding import make_mesh

FORMAT = "prunejax-eval/1"
DEFAULT_SEQ_LEN = 2048
METRICS = {
    "perplexity": "exp(mean NLL per scored token) over windows of `window.seq_len` tokens advanced by "
    "`window.stride`; each token is predicted from the tokens before it inside its window and scored once; "
    "with stride == seq_len (non-overlapping) the first token of every window is context only",
    "validation_loss": "mean NLL (nats) per scored token on the DATA_DIR split, same windows as perplexity",
    "acc": "lm-evaluation-harness 0.4 multiple_choice acc: argmax over choices of log p(' ' + choice | context) "
    "is the gold choice (WinoGrande: partial evaluation, argmax over filled-in contexts of log p(rest | context))",
    "acc_norm": "as acc, each log-likelihood divided by len(choice) in characters (the harness's definition)",
    "score": "the metric the paper reports for the task (WinoGrande, SciQ, BoolQ: acc; others acc_norm)",
    "average": "mean over the evaluated tasks of `score`",
}


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def software() -> dict[str, str]:
    out = hf.software_versions()
    for pkg in ("tokenizers", "lm_eval"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def evaluate_model(
    model: str,
    *,
    data: str | None = None,
    text: list[str] | None = None,
    task_names: list[str] | None = None,
    task_data: str | None = None,
    seq_len: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    dtype: Any = jnp.float32,
    mesh: Any = None,
) -> dict[str, Any]:
    """Perplexity per text file, validation loss on a DATA_DIR and zero-shot tasks of one model, on
    `mesh` (default: every device on the batch axis, weights laid out by the logical-axis rules)."""
    if not (data or text or task_names):
        raise ValueError("nothing to evaluate: give --data, --text and/or --tasks")
    if task_names and not task_data:
        raise ValueError("--tasks needs --task-data DIR (local copies of the task files)")
    task_names = [tasks.get_task(n).name for n in task_names or []]  # fail on a bad name before loading
    mesh = make_mesh() if mesh is None else mesh
    m = load_model(model, mesh=mesh)
    seq_len = seq_len or min(DEFAULT_SEQ_LEN, m.cfg.max_position_embeddings)
    stride = perplexity.check_seq_len(m.cfg, seq_len, stride)
    if (text or task_names) and m.tokenizer is None:
        raise ValueError(f"{model}: no tokenizer files beside the model, needed for --text and --tasks")
    kw = {"batch_size": batch_size, "mesh": mesh, "dtype": dtype}
    out: dict[str, Any] = {
        "format": FORMAT,
        "model": {
            **m.info,
            "parameters": m.cfg.num_params(),
            "layers": m.cfg.num_hidden_layers,
            "hidden_size": m.cfg.hidden_size,
            "intermediate_size": m.cfg.intermediate_size,
            "heads": [m.cfg.num_attention_heads, m.cfg.num_key_value_heads],
        },
        "window": {"seq_len": seq_len, "stride": stride},
        "compute_dtype": jnp.dtype(dtype).name,
        "fingerprints": {},
    }
    if text:
        out["perplexity"] = perplexity.text_perplexity(m.cfg, m.params, m.tokenizer, text, seq_len, stride=stride, **kw)
        out["fingerprints"].update({path: file_digest(path) for path in text})
    if data:
        val = perplexity.data_dir_nll(m.cfg, m.params, data, seq_len, max_tokens=max_tokens, stride=stride, **kw)
        out["validation"] = {"data_dir": storage.absolute(data), **val}
        out["validation_loss"] = val["nll"]
        out["fingerprints"][data] = val["fingerprint"]
    if task_names:
        zs = zeroshot.evaluate_tasks(m.cfg, m.params, m.tokenizer, task_names, task_data, limit=limit, **kw)
        out["tasks"], out["average"] = zs["tasks"], zs["average"]
        out["fingerprints"].update({r["file"]: file_digest(r["file"]) for r in zs["tasks"].values()})
        out["task_limit"] = limit
    check_finite_results(out)
    out["metrics"] = METRICS
    out["software"] = software()
    return out


def check_finite_results(results: Any, where: str = "") -> None:
    """A ValueError naming the first number of `results` that is NaN or Inf: no such result is ever written."""
    if isinstance(results, dict):
        for key, value in results.items():
            check_finite_results(value, f"{where}/{key}" if where else str(key))
    elif isinstance(results, (list, tuple)):
        for i, value in enumerate(results):
            check_finite_results(value, f"{where}/{i}")
    elif isinstance(results, (float, np.floating)) and not math.isfinite(results):
        raise ValueError(f"evaluation result {where} is {results}: the model's outputs are not finite")


def write_results(path: str, results: dict[str, Any], overwrite: bool = False) -> str:
    """Write results.json atomically (a local temporary file renamed into place, or one gs:// object);
    a NaN/Inf is a ValueError, never a file."""
    data = json.dumps(results, indent=2, default=str, allow_nan=False).encode()  # NaN is not JSON

    def write_and_check() -> None:
        # checked by the writer alone: another process may still be on its way here after process 0 wrote
        storage.check_free(path, overwrite, directory=False)
        storage.write_file(path, data)
        if storage.read_file(path) != data:  # verified before the verb reports success
            raise OSError(f"{path} reads back differently from what was written")

    distributed.one_writer(f"results {path}", write_and_check)
    return path
