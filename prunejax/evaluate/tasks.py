"""The paper's eight zero-shot tasks, read from local copies in their published formats.

Each task turns one document (a record of the Hugging Face dataset the harness uses, with the
same field names) into (context, continuation) requests exactly as lm-evaluation-harness 0.4.x
builds them with zero shots and the default target delimiter " ":
  * one context and one continuation per choice (ARC, HellaSwag, PIQA, SciQ, BoolQ, OpenBookQA);
  * WinoGrande's "partial evaluation": one context per option (the sentence up to the blank, the
    option filled in) and a single shared continuation (the rest of the sentence), so the options
    are compared on how well they predict the same words.
Metrics follow the harness's `multiple_choice` code: `acc` = argmax of the summed continuation
log-likelihoods is the gold choice; `acc_norm` = the same after dividing each log-likelihood by the
length of its choice string in characters (`len(choice)`, the delimiter not counted; for ASCII
text this is the byte length). Ties go to the first choice (numpy argmax).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np

Doc = dict[str, Any]
FORMATS = ("jsonl", "parquet")


class TaskError(ValueError):
    """An unknown task, or a task file that is missing or not in the published format."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One document as scored requests: log p(continuation | context) per pair."""

    pairs: tuple[tuple[str, str], ...]
    choices: tuple[str, ...]  # what acc_norm measures the length of (as the harness does)
    gold: int


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    split: str  # the split the harness evaluates (test if the dataset publishes labels for it)
    fields: tuple[str, ...]
    build: Callable[[Doc], Request]
    metric: str  # the metric the paper reports for this task


def _mc(context: str, choices: list[str], gold: int) -> Request:
    return Request(tuple((context, " " + c) for c in choices), tuple(choices), gold)


def _index(labels: list[str], key: str, field: str) -> int:
    if key not in labels:
        raise KeyError(f"{field}: {key!r} is not one of the choice labels {labels}")
    return labels.index(key)


def arc(doc: Doc) -> Request:
    ch = doc["choices"]
    gold = _index(list(ch["label"]), doc["answerKey"], "answerKey")
    return _mc(f"Question: {doc['question']}\nAnswer:", list(ch["text"]), gold)


def _hellaswag_clean(text: str) -> str:
    # the harness's preprocessing: WikiHow "[title]" markers and other bracketed artifacts removed
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def hellaswag(doc: Doc) -> Request:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = _hellaswag_clean(doc["activity_label"] + ": " + ctx)
    return _mc(query, [_hellaswag_clean(e) for e in doc["endings"]], int(doc["label"]))


def piqa(doc: Doc) -> Request:
    return _mc(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


def sciq(doc: Doc) -> Request:
    context = f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:"
    choices = [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]
    return _mc(context, choices, 3)


def boolq(doc: Doc) -> Request:
    label = doc["label"] if "label" in doc else int(bool(doc["answer"]))  # super_glue / google boolq
    return _mc(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"], int(label))


def openbookqa(doc: Doc) -> Request:
    ch = doc["choices"]
    gold = _index(list(ch["label"]), doc["answerKey"].lstrip(), "answerKey")
    return _mc(doc["question_stem"], list(ch["text"]), gold)


def winogrande(doc: Doc) -> Request:
    sentence = doc["sentence"]
    if "_" not in sentence:
        raise KeyError("sentence: has no '_' blank")
    blank = sentence.index("_")
    contexts = [sentence[:blank] + doc["option1"], sentence[:blank] + doc["option2"]]
    continuation = " " + sentence[blank + 1 :].strip()
    answer = {"1": 0, "2": 1}.get(str(doc["answer"]))
    if answer is None:
        raise KeyError(f"answer: {doc['answer']!r} is not '1' or '2'")
    return Request(tuple((c, continuation) for c in contexts), tuple(contexts), answer)


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("winogrande", "validation", ("sentence", "option1", "option2", "answer"), winogrande, "acc"),
        Task("arc_challenge", "test", ("question", "choices", "answerKey"), arc, "acc_norm"),
        Task("arc_easy", "test", ("question", "choices", "answerKey"), arc, "acc_norm"),
        Task(
            "hellaswag", "validation", ("activity_label", "ctx_a", "ctx_b", "endings", "label"), hellaswag, "acc_norm"
        ),
        Task("piqa", "validation", ("goal", "sol1", "sol2", "label"), piqa, "acc_norm"),
        Task(
            "sciq",
            "test",
            ("support", "question", "distractor1", "distractor2", "distractor3", "correct_answer"),
            sciq,
            "acc",
        ),
        Task("boolq", "validation", ("passage", "question"), boolq, "acc"),
        Task("openbookqa", "test", ("question_stem", "choices", "answerKey"), openbookqa, "acc_norm"),
    ]
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


def parse_task_names(spec: str) -> list[str]:
    """'all' or a comma-separated list of task names, validated."""
    names = list(TASKS) if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise TaskError(f"no task names given; valid tasks: {', '.join(TASKS)}")
    for name in names:
        get_task(name)
    return names


def task_file(task: Task, data_dir: str) -> str:
    """`DIR/<task>.jsonl|parquet` or `DIR/<task>/<split>.jsonl|parquet`."""
    candidates = [os.path.join(data_dir, f"{task.name}.{ext}") for ext in FORMATS]
    candidates += [os.path.join(data_dir, task.name, f"{task.split}.{ext}") for ext in FORMATS]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise TaskError(f"task {task.name}: no data file; looked for {', '.join(candidates)}")


def _read_records(path: str) -> list[Doc]:
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise TaskError(f"{path}: reading parquet needs pyarrow (pip install prunejax[eval])") from e
        return pq.read_table(path).to_pylist()
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
            if not isinstance(record, dict):
                raise TaskError(f"{path}:{lineno}: expected a JSON object per line")
            records.append(record)
    return records


def load_task(name: str, data_dir: str, limit: int | None = None) -> tuple[str, list[Request]]:
    """(file, requests) for a task's local data; the first `limit` documents when given."""
    task = get_task(name)
    path = task_file(task, data_dir)
    docs = _read_records(path)[:limit]
    if not docs:
        raise TaskError(f"{path}: no documents")
    requests = []
    for i, doc in enumerate(docs):
        where = f"{path}: document {i + 1}"
        missing = [f for f in task.fields if f not in doc]
        if name == "boolq" and "label" not in doc and "answer" not in doc:
            missing.append("label")
        if missing:
            raise TaskError(f"{where}: missing field {missing[0]!r} (task {name} needs {', '.join(task.fields)})")
        try:
            req = task.build(doc)
        except KeyError as e:
            detail = str(e.args[0])
            detail = detail if ":" in detail else f"missing field {detail!r}"
            raise TaskError(f"{where}: {detail}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise TaskError(f"{where}: a field has the wrong type or value for task {name} ({e})") from None
        if not 0 <= req.gold < len(req.choices):
            raise TaskError(f"{where}: gold answer {req.gold} is outside the {len(req.choices)} choices")
        requests.append(req)
    return path, requests


def doc_metrics(request: Request, lls: list[float]) -> dict[str, float]:
    """acc and acc_norm of one document from its per-pair log-likelihoods (harness definitions)."""
    lls_C = np.asarray(lls, np.float64)
    lengths_C = np.asarray([float(len(c)) for c in request.choices])
    return {
        "acc": float(np.argmax(lls_C) == request.gold),
        "acc_norm": float(np.argmax(lls_C / lengths_C) == request.gold),
    }


def aggregate(per_doc: list[dict[str, float]]) -> dict[str, float]:
    """Means and standard errors (sample std / sqrt(n), as the harness reports)."""
    out: dict[str, float] = {}
    for key in ("acc", "acc_norm"):
        x = np.asarray([d[key] for d in per_doc])
        out[key] = float(x.mean())
        out[f"{key}_stderr"] = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return out
