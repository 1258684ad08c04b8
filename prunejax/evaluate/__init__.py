"""Evaluation: perplexity, validation loss, zero-shot multiple choice, and the lm-eval adapter.

Importing this package registers the lm-evaluation-harness model type `prunejax` when lm-eval is
installed (`pip install prunejax[eval]`); without it everything else works unchanged.
"""

import importlib.util

from prunejax.evaluate.loglik import Score, Span, score_spans, token_logprobs
from prunejax.evaluate.perplexity import stream_nll, text_perplexity, validation_loss, windows
from prunejax.evaluate.source import load_model
from prunejax.evaluate.tasks import TASKS, TaskError
from prunejax.evaluate.zeroshot import evaluate_tasks

if importlib.util.find_spec("lm_eval") is not None:
    from prunejax.evaluate import harness  # noqa: F401  (registers the harness model type)

__all__ = [
    "TASKS",
    "Score",
    "Span",
    "TaskError",
    "evaluate_tasks",
    "load_model",
    "score_spans",
    "stream_nll",
    "text_perplexity",
    "token_logprobs",
    "validation_loss",
    "windows",
]
