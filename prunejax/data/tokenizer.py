"""Tokenizers: load a fast HF tokenizer from any source, and train a small byte-level BPE for tiny models."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from prunejax import storage
from prunejax.data.store import DataError
from prunejax.hf import TOKENIZER_FILES, atomic_dir, check_no_remote_code

EOS_TOKEN = "<|endoftext|>"


@contextlib.contextmanager
def tokenizer_dir(src: str) -> Iterator[str]:
    """A directory holding HF tokenizer files for `src`: a tokenizer/MODEL_DIR/HF dir, or a `.gguf`."""
    if storage.is_remote(src):  # a committed tokenizer dir or MODEL_DIR: its tokenizer files only
        local = storage.local_dir(src, only=TOKENIZER_FILES)
        if not os.path.exists(os.path.join(local, "tokenizer.json")):
            raise DataError(f"{src}: no tokenizer.json (a fast tokenizer is required)")
        yield local
        return
    if src.endswith(".gguf"):
        if not os.path.isfile(src):
            raise DataError(f"{src}: no such GGUF file")
        from prunejax.gguf_import import save_gguf_tokenizer

        with tempfile.TemporaryDirectory() as tmp:
            save_gguf_tokenizer(src, tmp)
            yield tmp
        return
    if not os.path.isdir(src):
        raise DataError(f"{src}: not a tokenizer directory, MODEL_DIR or .gguf file")
    if not os.path.exists(os.path.join(src, "tokenizer.json")):
        raise DataError(f"{src}: no tokenizer.json (a fast tokenizer is required)")
    yield src


def load_tokenizer(directory: str) -> Any:
    """The fast tokenizer saved in `directory` (transformers' AutoTokenizer, never remote code)."""
    from transformers import AutoTokenizer

    check_no_remote_code(directory)
    tok = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    if not getattr(tok, "is_fast", False):
        raise DataError(f"{directory}: tokenizer is not a fast tokenizer")
    if tok.eos_token_id is None:
        raise DataError(f"{directory}: tokenizer has no EOS token to separate documents")
    return tok


def tokenizer_files(directory: str) -> list[str]:
    """The tokenizer files in `directory` (a MODEL_DIR also holds weights: only these are copied)."""
    return [os.path.join(directory, n) for n in TOKENIZER_FILES if os.path.exists(os.path.join(directory, n))]


def tokenizer_info(tok: Any, directory: str) -> dict[str, Any]:
    """What meta.json records about the tokenizer."""
    return {
        "source": storage.absolute(directory),
        "class": type(tok).__name__,
        "vocab_size": len(tok),
        "eos_token": tok.eos_token,
        "eos_id": tok.eos_token_id,
        "bos_token": tok.bos_token,
        "bos_id": tok.bos_token_id,
    }


def train_bpe(
    documents: Iterable[str],
    out_dir: str,
    *,
    vocab_size: int = 512,
    min_frequency: int = 2,
    overwrite: bool = False,
) -> str:
    """Train a byte-level BPE (256 byte symbols + merges + EOS) and save it as an HF tokenizer dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise DataError(f"vocab_size {vocab_size} is below the {len(alphabet) + 1} byte-level minimum")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN)
    with atomic_dir(out_dir, overwrite) as tmp:
        fast.save_pretrained(tmp)
    return out_dir
