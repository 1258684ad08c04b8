"""prunejax: prune a pretrained Llama or train the small model from scratch, in JAX.

The public API (see `prunejax.api`): `load` a model (a `Model` of cfg, params and masks) from any source,
`prune` it (masks composed, carried or refused), `train`, `evaluate` and `save` it; `forward(cfg, params,
tokens)` and `init_params(cfg, key)` are the model itself; `LlamaConfig` and the presets its configs.
"""

import importlib

# `prune`, `train` and `evaluate` are functions named like the subpackages that implement them. Python
# binds a subpackage to its parent's attribute when it is first imported, so the subpackages are imported
# here first and the functions bound after them: `prunejax.train` is the function whatever is imported
# later. The subpackages stay reachable by `from prunejax.train import run` (not `import prunejax.train as`).
for _package in ("prunejax.evaluate", "prunejax.prune", "prunejax.train"):
    importlib.import_module(_package)
del _package

from prunejax.api import Model, calibration_tokens, evaluate, load, perplexity, prune, save, train  # noqa: E402
from prunejax.config import PRESETS, LlamaConfig, preset  # noqa: E402
from prunejax.model import forward, init_params  # noqa: E402

__all__ = [
    "PRESETS",
    "LlamaConfig",
    "Model",
    "calibration_tokens",
    "evaluate",
    "forward",
    "init_params",
    "load",
    "perplexity",
    "preset",
    "prune",
    "save",
    "train",
]
