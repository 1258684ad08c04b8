"""prunejax: prune a pretrained Llama or train the small model from scratch, in JAX."""

from prunejax.config import PRESETS, LlamaConfig, preset
from prunejax.hf import load, load_masks, save
from prunejax.model import forward, init_params

__all__ = ["PRESETS", "LlamaConfig", "forward", "init_params", "load", "load_masks", "preset", "save"]
