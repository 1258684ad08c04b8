"""Hugging Face checkpoints and MODEL_DIRs: safetensors in, safetensors out, nothing else.

Conversion is transposes and reshapes only. Every tensor of the checkpoint is consumed exactly
once and every shape is checked against the config; anything else is an error naming the file
and the tensor. Pickle-based formats are never read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from prunejax import distributed, storage
from prunejax.config import ConfigError, LlamaConfig
from prunejax.tree import get_path, leaf_paths, nonfinite_leaf, set_path, sparsity

Params = dict[str, Any]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
)
MASKS_FILE = "masks.safetensors"
PROVENANCE_FILE = "prunejax.json"
DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16, "float16": np.float16}


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, or disagrees with its config."""


REMOTE_CODE_FILES = ("tokenizer_config.json", "config.json")


def check_no_remote_code(directory: str) -> None:
    """Refuse a tokenizer or model directory whose tokenizer_config.json or config.json has an `auto_map`
    (classes from Python files in the directory): prunejax never runs code it reads, and every
    `from_pretrained` passes trust_remote_code=False."""
    for name in REMOTE_CODE_FILES:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable or not JSON ({e})") from None
        if isinstance(d, dict) and d.get("auto_map"):
            raise CheckpointError(
                f"{path}: auto_map names custom code ({', '.join(map(str, d['auto_map']))}); prunejax never runs "
                "code from a model or tokenizer directory (trust_remote_code=False); remove auto_map to use "
                "the built-in classes"
            )


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One HF tensor and where it lives in params. Linear weights are stored (out, in) by HF and
    (in..., out...) here, so `linear` means transpose then reshape."""

    hf_name: str
    path: tuple[str, ...]
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]
    linear: bool

    def to_params(self, w: np.ndarray) -> np.ndarray:
        return w.T.reshape(self.shape) if self.linear else w.reshape(self.shape)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(self.hf_shape[::-1]).T if self.linear else x.reshape(self.hf_shape)


def tensor_specs(cfg: LlamaConfig) -> list[TensorSpec]:
    """The full list of tensors a Llama checkpoint of this config holds, in HF order."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    n, k, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    specs = [TensorSpec("model.embed_tokens.weight", ("embed_tokens",), (v, d), (v, d), False)]
    for i in range(cfg.num_hidden_layers):
        pre, p = f"model.layers.{i}.", ("layers", str(i))
        specs += [
            TensorSpec(pre + "self_attn.q_proj.weight", (*p, "self_attn", "q_proj"), (n * h, d), (d, n, h), True),
            TensorSpec(pre + "self_attn.k_proj.weight", (*p, "self_attn", "k_proj"), (k * h, d), (d, k, h), True),
            TensorSpec(pre + "self_attn.v_proj.weight", (*p, "self_attn", "v_proj"), (k * h, d), (d, k, h), True),
            TensorSpec(pre + "self_attn.o_proj.weight", (*p, "self_attn", "o_proj"), (d, n * h), (n, h, d), True),
            TensorSpec(pre + "mlp.gate_proj.weight", (*p, "mlp", "gate_proj"), (f, d), (d, f), True),
            TensorSpec(pre + "mlp.up_proj.weight", (*p, "mlp", "up_proj"), (f, d), (d, f), True),
            TensorSpec(pre + "mlp.down_proj.weight", (*p, "mlp", "down_proj"), (d, f), (f, d), True),
            TensorSpec(pre + "input_layernorm.weight", (*p, "input_layernorm"), (d,), (d,), False),
            TensorSpec(pre + "post_attention_layernorm.weight", (*p, "post_attention_layernorm"), (d,), (d,), False),
        ]
    specs.append(TensorSpec("model.norm.weight", ("norm",), (d,), (d,), False))
    if not cfg.tie_word_embeddings:
        specs.append(TensorSpec("lm_head.weight", ("lm_head",), (v, d), (d, v), True))
    return specs


def check_finite(params: Params, source: str) -> None:
    """A CheckpointError naming `source` and the first weight with a NaN or Inf; nothing for finite weights."""
    leaf = nonfinite_leaf(params)
    if leaf is not None:
        raise CheckpointError(f"{source}: weight {leaf} holds NaN or Inf values; refusing a non-finite model")


# ---- reading -------------------------------------------------------------------------------
def _weight_files(model_dir: str) -> dict[str, str]:
    """tensor name -> file, from the sharded index or the single safetensors file."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            return {name: os.path.join(model_dir, file) for name, file in weight_map.items()}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index (a JSON object with a weight_map): {e}") from None
    single = os.path.join(model_dir, "model.safetensors")
    if not os.path.exists(single):
        found = sorted(os.listdir(model_dir))
        pickled = [x for x in found if x.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        hint = f" (found {', '.join(pickled)}: pickle formats are never loaded)" if pickled else ""
        raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json{hint}")
    with _open(single) as f:
        return {name: single for name in f.keys()}


def _open(file: str) -> Any:
    if not os.path.exists(file):
        raise CheckpointError(f"{file}: file is missing")
    try:
        return safe_open(file, framework="numpy")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: unreadable or truncated safetensors file ({e})") from e


def read_tensors(files: dict[str, str]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) one tensor at a time, opening each file once."""
    by_file: dict[str, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with _open(file) as f:
            available = set(f.keys())
            for name in names:
                if name not in available:
                    raise CheckpointError(f"{file}: tensor {name} listed in the index is not in the file")
                try:
                    yield name, f.get_tensor(name)
                except (SafetensorError, OSError) as e:
                    raise CheckpointError(f"{file}: tensor {name} is unreadable ({e})") from e


Place = Callable[[tuple[str, ...], np.ndarray], Any]


def on_host(path: tuple[str, ...], x: np.ndarray) -> np.ndarray:
    """A `place` that keeps a tensor in host memory (calibration then moves one layer at a time)."""
    return np.asarray(x)


def params_from_tensors(
    cfg: LlamaConfig,
    tensors: Iterator[tuple[str, np.ndarray]],
    *,
    source: str,
    dtype: Any = jnp.float32,
    place: Callable[[tuple[str, ...], np.ndarray], jax.Array] | None = None,
) -> Params:
    """Assemble params from HF-named tensors; every expected tensor exactly once, shapes checked.
    `place(path, array)` puts each converted tensor on its device/sharding as it arrives."""
    specs = {s.hf_name: s for s in tensor_specs(cfg)}
    place = place or (lambda path, x: jnp.asarray(x))
    params: Params = {}
    seen: set[str] = set()
    extra: list[str] = []
    tied_head = None
    for name, w in tensors:
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            tied_head = w  # some writers store the tied head; it must equal the embedding
            continue
        spec = specs.get(name)
        if spec is None:
            extra.append(name)
            continue
        if name in seen:
            raise CheckpointError(f"{source}: tensor {name} appears twice")
        if tuple(w.shape) != spec.hf_shape:
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(w.shape)}, but config.json implies {spec.hf_shape}"
            )
        seen.add(name)
        set_path(params, spec.path, place(spec.path, spec.to_params(w).astype(dtype)))
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor(s) for this config: {', '.join(sorted(extra)[:8])}")
    missing = [n for n in specs if n not in seen]
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s): {', '.join(missing[:8])}")
    if tied_head is not None and not np.array_equal(
        np.asarray(tied_head, np.float32), np.asarray(get_path(params, ("embed_tokens",)), np.float32)
    ):
        raise CheckpointError(f"{source}: tie_word_embeddings=true but lm_head.weight differs from the embedding")
    return params


def load_config(model_dir: str) -> LlamaConfig:
    model_dir = storage.local_dir(model_dir)  # a gs:// MODEL_DIR: its committed local copy
    path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise CheckpointError(f"{model_dir}: not a directory")
    if not os.path.exists(path):
        raise CheckpointError(f"{model_dir}: config.json is missing")
    return LlamaConfig.from_file(path)


def load(
    model_dir: str,
    *,
    dtype: Any = jnp.float32,
    place: Callable[[tuple[str, ...], np.ndarray], jax.Array] | None = None,
) -> tuple[LlamaConfig, Params]:
    """Read an HF directory or MODEL_DIR (local or gs://), masks aside. Tensors are read one at a time and placed
    as they come. The safetensors reader under `prunejax.modelio.load`, the loader of every model source."""
    model_dir = storage.local_dir(model_dir)
    cfg = load_config(model_dir)
    files = _weight_files(model_dir)
    try:
        params = params_from_tensors(cfg, read_tensors(files), source=model_dir, dtype=dtype, place=place)
    except ConfigError as e:
        raise CheckpointError(f"{model_dir}: {e}") from e
    return cfg, params


def load_masks(model_dir: str, cfg: LlamaConfig) -> Params | None:
    """Boolean masks (True = kept) shaped like params, or None for a dense model."""
    file = os.path.join(storage.local_dir(model_dir), MASKS_FILE)
    if not os.path.exists(file):
        recorded = load_provenance(model_dir).get("sparsity") or {}
        if recorded.get("masked_weights"):  # saved sparse: without its masks a retrain would regrow the zeros
            raise CheckpointError(
                f"{file} is missing, but {PROVENANCE_FILE} records a sparse model (masks over "
                f"{recorded['masked_weights']:,} weights): it was deleted or not copied; restore it (or prune again)"
            )
        return None
    specs = {s.hf_name: s for s in tensor_specs(cfg)}
    masks: Params = {}
    with _open(file) as f:
        for name in f.keys():
            spec = specs.get(name)
            if spec is None:
                raise CheckpointError(f"{file}: mask {name} names no weight of this model")
            m = f.get_tensor(name)
            if tuple(m.shape) != spec.hf_shape:
                raise CheckpointError(f"{file}: mask {name} has shape {tuple(m.shape)}, weight has {spec.hf_shape}")
            set_path(masks, spec.path, jnp.asarray(spec.to_params(m.astype(bool))))
    return masks


def load_provenance(model_dir: str) -> dict[str, Any]:
    path = os.path.join(storage.local_dir(model_dir), PROVENANCE_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


# ---- writing -------------------------------------------------------------------------------
def software_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("prunejax", "jax", "flax", "optax", "transformers", "safetensors", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _dtype_name(params: Params) -> str:
    dtypes = {np.dtype(x.dtype).name for _, x in leaf_paths(params)}
    if len(dtypes) != 1:
        raise CheckpointError(f"params mix dtypes {sorted(dtypes)}; cast them to one before saving")
    name = dtypes.pop()
    if name not in DTYPES:
        raise CheckpointError(f"cannot save params of dtype {name}")
    return name


def _write_sharded(out_dir: str, tensors: list[tuple[str, np.ndarray]], base: str, max_shard_bytes: int) -> None:
    """HF layout: one `<base>.safetensors`, or numbered shards plus `<base>.safetensors.index.json`."""
    total = sum(t.nbytes for _, t in tensors)
    if total <= max_shard_bytes:
        save_file(dict(tensors), os.path.join(out_dir, f"{base}.safetensors"), metadata={"format": "pt"})
        return
    shards: list[list[tuple[str, np.ndarray]]] = [[]]
    size = 0
    for name, t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, t))
        size += t.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"{base}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(dict(shard), os.path.join(out_dir, file), metadata={"format": "pt"})
        weight_map.update({name: file for name, _ in shard})
    with open(os.path.join(out_dir, f"{base}.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def _default_permissions(root: str) -> None:
    """mkdtemp and some writers create private (0700/0600) entries; published outputs get the
    permissions a plain mkdir/open would have given under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for base, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(base, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(base, name), 0o666 & ~umask)


@contextlib.contextmanager
def atomic_dir(out_dir: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary sibling of `out_dir` that replaces it only once the block completes, so a
    crash or error leaves either the old directory or nothing, never a half-written one."""
    storage.check_free(out_dir, overwrite)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.tmp-")
    try:
        yield tmp
        _default_permissions(tmp)
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.old-")
            os.replace(out_dir, os.path.join(old, "x"))
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save(
    out_dir: str,
    cfg: LlamaConfig,
    params: Params,
    masks: Params | None = None,
    *,
    tokenizer_dir: str | None = None,
    provenance: dict[str, Any] | None = None,
    max_shard_bytes: int = 5 * 2**30,
    overwrite: bool = False,
) -> str:
    """Write a MODEL_DIR that `transformers.AutoModelForCausalLM.from_pretrained` loads as it is.
    The directory appears complete or not at all (written aside, then renamed)."""
    dtype_name = _dtype_name(params)
    specs = tensor_specs(cfg)
    tensors = []
    for spec in specs:  # gathered one tensor at a time
        x = get_path(params, spec.path)
        if tuple(x.shape) != spec.shape:
            raise CheckpointError(
                f"param {'/'.join(spec.path)} has shape {tuple(x.shape)}, config implies {spec.shape}"
            )
        tensors.append((spec.hf_name, np.ascontiguousarray(spec.to_hf(distributed.to_host(x)))))
    mask_tensors = []
    if masks:
        for spec in specs:
            try:
                m = get_path(masks, spec.path)
            except KeyError:
                continue
            mask_tensors.append((spec.hf_name, np.ascontiguousarray(spec.to_hf(distributed.to_host(m).astype(bool)))))
    hf_cfg = cfg.replace(torch_dtype=dtype_name).to_hf_dict()
    realized = None
    if mask_tensors:
        sp = sparsity(masks, params)
        realized = {k: sp[k] for k in ("mask_sparsity", "zero_fraction", "masked_weights")}
    # every process gathered the tensors (a collective); one writes, the others wait for the directory
    distributed.one_writer(
        f"MODEL_DIR {out_dir}",
        lambda: _write_model_dir(
            out_dir, tensors, mask_tensors, hf_cfg, realized, tokenizer_dir, provenance, max_shard_bytes, overwrite
        ),
    )
    return out_dir


def _write_model_dir(
    out_dir: str,
    tensors: list[tuple[str, np.ndarray]],
    mask_tensors: list[tuple[str, np.ndarray]],
    hf_cfg: dict[str, Any],
    sparsity: dict[str, float] | None,
    tokenizer_dir: str | None,
    provenance: dict[str, Any] | None,
    max_shard_bytes: int,
    overwrite: bool,
) -> None:
    if storage.is_remote(out_dir):  # written whole locally, then uploaded and committed (marker last)
        storage.check_free(out_dir, overwrite)
        with tempfile.TemporaryDirectory() as local:
            args = (tensors, mask_tensors, hf_cfg, sparsity, tokenizer_dir, provenance, max_shard_bytes, True)
            _write_model_dir(os.path.join(local, "m"), *args)
            storage.publish(os.path.join(local, "m"), out_dir, overwrite=overwrite)
        return
    tokenizer_dir = storage.local_dir(tokenizer_dir) if tokenizer_dir else None
    with atomic_dir(out_dir, overwrite) as tmp:
        _write_sharded(tmp, tensors, "model", max_shard_bytes)
        if mask_tensors:
            save_file(dict(mask_tensors), os.path.join(tmp, MASKS_FILE))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_cfg, f, indent=2)
        if tokenizer_dir:
            for name in TOKENIZER_FILES:
                src = os.path.join(tokenizer_dir, name)
                if os.path.exists(src):
                    shutil.copy(src, os.path.join(tmp, name))
        record = {"format": "prunejax-model/1", "software": software_versions(), **(provenance or {})}
        if sparsity is not None:
            record["sparsity"] = sparsity
        with open(os.path.join(tmp, PROVENANCE_FILE), "w") as f:
            json.dump(record, f, indent=2, default=str)
        verify_written(tmp, tensors, mask_tensors)  # before the directory is renamed into place


def verify_written(model_dir: str, tensors: list[tuple[str, np.ndarray]], masks: list[tuple[str, np.ndarray]]) -> None:
    """Read a just-written MODEL_DIR back: every tensor present, with the shape, dtype and values
    written; the masks likewise. A CheckpointError names the first that is not. (Finiteness is the
    writers' check before they save: prune refuses a non-finite result, train a non-finite state.)"""
    written = _weight_files(model_dir)
    if set(written) != {name for name, _ in tensors}:
        raise CheckpointError(f"{model_dir}: wrote {sorted(set(written) ^ {n for n, _ in tensors})[:3]} inconsistently")
    _check_read_back(model_dir, written, dict(tensors))
    if masks:
        _check_read_back(model_dir, {name: os.path.join(model_dir, MASKS_FILE) for name, _ in masks}, dict(masks))


def _check_read_back(model_dir: str, files: dict[str, str], want: dict[str, np.ndarray]) -> None:
    for name, got in read_tensors(files):
        w = want[name]
        if got.shape != w.shape or got.dtype != w.dtype or got.tobytes() != w.tobytes():
            raise CheckpointError(f"{model_dir}: tensor {name} reads back differently from what was written")
