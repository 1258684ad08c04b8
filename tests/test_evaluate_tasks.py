"""Zero-shot tasks: request construction per task, harness metrics by hand, bad files, masks, torch parity."""

from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest
from test_evaluate_loglik import build_model_dir, torch_logprobs

from prunejax import hf
from prunejax.evaluate import source, tasks, zeroshot

WORDS = "the earth was without form and void darkness upon face of deep spirit moved waters light fox dog".split()


def _s(r: random.Random, n: int) -> str:
    return " ".join(r.choice(WORDS) for _ in range(n))


def task_docs(name: str, n: int = 4, seed: int = 0) -> list[dict]:
    """Random documents in each task's published Hugging Face format (field names and types)."""
    r = random.Random(seed)
    out: list[dict] = []
    for i in range(n):
        if name == "winogrande":
            doc = {"sentence": f"{_s(r, 4).capitalize()} _ {_s(r, 5)}.", "option1": _s(r, 1), "option2": _s(r, 2)}
            out.append({**doc, "answer": r.choice("12")})
        elif name in ("arc_easy", "arc_challenge"):
            k = r.choice([3, 4])
            labels = list("ABCD"[:k]) if i % 2 else list("1234"[:k])
            choices = {"text": [_s(r, r.randint(1, 4)) for _ in range(k)], "label": labels}
            out.append({"id": str(i), "question": _s(r, 6) + "?", "choices": choices, "answerKey": r.choice(labels)})
        elif name == "hellaswag":
            endings = [_s(r, r.randint(2, 6)) + (" [title] x" if j == 0 else "") for j in range(4)]
            ctx = {"activity_label": _s(r, 2).title(), "ctx_a": _s(r, 6) + ".", "ctx_b": _s(r, 3), "ctx": ""}
            out.append({"ind": i, **ctx, "endings": endings, "split": "val", "label": str(r.randint(0, 3))})
        elif name == "piqa":
            out.append(
                {"goal": _s(r, 5), "sol1": _s(r, r.randint(2, 8)), "sol2": _s(r, r.randint(2, 8)), "label": i % 2}
            )
        elif name == "sciq":
            d = {f"distractor{j}": _s(r, r.randint(1, 2)) for j in (1, 2, 3)}
            support = ("  " + _s(r, 10)) if i % 2 else ""
            out.append({"question": _s(r, 5) + "?", **d, "correct_answer": _s(r, 2), "support": support})
        elif name == "boolq":
            out.append({"question": _s(r, 5), "passage": _s(r, 20), "idx": i, "label": r.randint(0, 1)})
        elif name == "openbookqa":
            choices = {"text": [_s(r, r.randint(1, 4)) for _ in range(4)], "label": list("ABCD")}
            out.append({"id": str(i), "question_stem": _s(r, 6), "choices": choices, "answerKey": r.choice("ABCD")})
    return out


def write_task_dir(out_dir: str, n: int = 4) -> str:
    os.makedirs(out_dir, exist_ok=True)
    for name in tasks.TASKS:
        with open(os.path.join(out_dir, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(d) + "\n" for d in task_docs(name, n))
    return out_dir


def test_requests_by_hand() -> None:
    wino = tasks.winogrande(
        {"sentence": "Ann gave Bo a cup because _ was thirsty.", "option1": "Ann", "option2": "Bo", "answer": "2"}
    )
    assert wino.pairs == (
        ("Ann gave Bo a cup because Ann", " was thirsty."),
        ("Ann gave Bo a cup because Bo", " was thirsty."),
    )
    assert wino.gold == 1
    arc = tasks.arc({"question": "Q?", "choices": {"text": ["x", "yy"], "label": ["A", "B"]}, "answerKey": "B"})
    assert arc.pairs == (("Question: Q?\nAnswer:", " x"), ("Question: Q?\nAnswer:", " yy")) and arc.gold == 1
    hs = tasks.hellaswag(
        {
            "activity_label": "Cooking",
            "ctx_a": "A man cuts.",
            "ctx_b": "HE then",
            "endings": ["eats [title] it.", "b"],
            "label": "0",
        }
    )
    assert hs.pairs[0] == ("Cooking: A man cuts. He then", " eats. it.")  # str.capitalize lowercases the rest
    sciq = tasks.sciq(
        {
            "support": "  S.",
            "question": "Q?",
            "distractor1": "a",
            "distractor2": "b",
            "distractor3": "c",
            "correct_answer": "d",
        }
    )
    assert sciq.pairs[3] == ("S.\nQuestion: Q?\nAnswer:", " d") and sciq.gold == 3
    bq = tasks.boolq({"passage": "P.", "question": "is it", "label": 1})
    assert bq.pairs == (("P.\nQuestion: is it?\nAnswer:", " no"), ("P.\nQuestion: is it?\nAnswer:", " yes"))
    assert tasks.boolq({"passage": "P.", "question": "q", "answer": False}).gold == 0  # google/boolq field names
    ob = tasks.openbookqa(
        {"question_stem": "Sun is", "choices": {"text": ["hot", "cold"], "label": ["A", "B"]}, "answerKey": " A"}
    )
    assert ob.pairs[0] == ("Sun is", " hot") and ob.gold == 0
    pq = tasks.piqa({"goal": "g", "sol1": "s1", "sol2": "s2", "label": 1})
    assert pq.pairs[1] == ("Question: g\nAnswer:", " s2") and pq.gold == 1


def test_acc_and_acc_norm_by_hand() -> None:
    req = tasks.Request((("c", " a"), ("c", " bbbb"), ("c", " cc")), ("a", "bbbb", "cc"), gold=1)
    # raw: argmax(-3, -4, -3.5) = 0 (wrong); per char: (-3, -1, -1.75) -> 1 (right)
    assert tasks.doc_metrics(req, [-3.0, -4.0, -3.5]) == {"acc": 0.0, "acc_norm": 1.0}
    assert tasks.doc_metrics(req, [-2.0, -2.0, -9.0]) == {"acc": 0.0, "acc_norm": 1.0}  # ties: first choice
    agg = tasks.aggregate([{"acc": 1.0, "acc_norm": 0.0}, {"acc": 0.0, "acc_norm": 0.0}, {"acc": 1.0, "acc_norm": 1.0}])
    assert agg["acc"] == pytest.approx(2 / 3) and agg["acc_stderr"] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))


def test_bad_task_files_name_file_and_field(tmp_path) -> None:
    with pytest.raises(tasks.TaskError, match="unknown task 'mmlu'; valid tasks: winogrande, arc_challenge"):
        tasks.parse_task_names("arc_easy,mmlu")
    with pytest.raises(tasks.TaskError, match="piqa: no data file; looked for"):
        tasks.load_task("piqa", str(tmp_path))
    (tmp_path / "piqa.jsonl").write_text(json.dumps({"goal": "g", "sol1": "a", "label": 0}) + "\n")
    with pytest.raises(tasks.TaskError, match=r"piqa.jsonl: document 1: missing field 'sol2'"):
        tasks.load_task("piqa", str(tmp_path))
    (tmp_path / "arc_easy.jsonl").write_text(
        json.dumps({"question": "q", "choices": {"text": ["a"]}, "answerKey": "A"})
    )
    with pytest.raises(tasks.TaskError, match=r"arc_easy.jsonl: document 1: missing field 'label'"):
        tasks.load_task("arc_easy", str(tmp_path))
    (tmp_path / "winogrande.jsonl").write_text('{"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "3"}\n')
    with pytest.raises(tasks.TaskError, match=r"winogrande.jsonl: document 1: answer: '3' is not '1' or '2'"):
        tasks.load_task("winogrande", str(tmp_path))
    (tmp_path / "boolq.jsonl").write_text("not json\n")
    with pytest.raises(tasks.TaskError, match=r"boolq.jsonl:1: not a JSON line"):
        tasks.load_task("boolq", str(tmp_path))


def test_parquet_and_split_directory_layout(tmp_path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "arc_easy").mkdir()
    docs = task_docs("arc_easy", 3)
    pq.write_table(pa.Table.from_pylist(docs), str(tmp_path / "arc_easy" / "test.parquet"))
    path, reqs = tasks.load_task("arc_easy", str(tmp_path))
    assert path.endswith("arc_easy/test.parquet")
    assert [r.gold for r in reqs] == [tasks.arc(d).gold for d in docs]


class _Tok:
    """A character tokenizer with a BOS that it prepends, to check the harness's encoding rules."""

    bos_token_id, eos_token_id = 0, 1

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": ([0] if add_special_tokens else []) + [2 + ord(c) % 50 for c in text]}

    def decode(self, ids: list[int]) -> str:
        return "<s>" if ids == [0] else "?"


def test_encode_pair_rules() -> None:
    tok = _Tok()
    ctx, cont = zeroshot.encode_pair(tok, "ab ", "c")  # trailing space moves to the continuation
    assert ctx == [0, 2 + ord("a") % 50, 2 + ord("b") % 50] and cont == [2 + ord(" ") % 50, 2 + ord("c") % 50]
    assert zeroshot.encode_pair(tok, "", "xy") == ([0], [2 + ord("x") % 50, 2 + ord("y") % 50])
    span = zeroshot.to_span(list(range(10)), [7, 8], max_len=5)  # left-truncated to max_len + 1 tokens
    assert span.tokens == (6, 7, 8, 9, 7, 8) and span.first == 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_model_dir(str(tmp_path_factory.mktemp("tiny")), max_positions=256)


def test_zero_shot_loglikelihoods_equal_torch(tiny, tmp_path) -> None:
    m = source.load_model(tiny)
    task_dir = write_task_dir(str(tmp_path / "tasks"), n=2)
    for name in ("winogrande", "hellaswag"):
        _, reqs = tasks.load_task(name, task_dir)
        pairs = [p for r in reqs for p in r.pairs]
        scores = zeroshot.loglikelihoods(m.cfg, m.params, m.tokenizer, pairs, batch_size=4)
        for (ctx, cont), score in zip(pairs, scores, strict=True):
            c, x = zeroshot.encode_pair(m.tokenizer, ctx, cont)
            ref = torch_logprobs(tiny, c + x)[len(c) - 1 :]
            assert score.count == len(x) and math.isclose(score.logprob, ref.sum(), rel_tol=1e-4)
    out = zeroshot.evaluate_tasks(m.cfg, m.params, m.tokenizer, ["boolq", "piqa"], task_dir, batch_size=4)
    assert out["average"] == pytest.approx((out["tasks"]["boolq"]["acc"] + out["tasks"]["piqa"]["acc_norm"]) / 2)


def test_sparse_model_dir_is_evaluated_with_its_masks(tiny, tmp_path) -> None:
    cfg, params = hf.load(tiny)
    w = np.asarray(params["layers"]["0"]["mlp"]["up_proj"])
    mask = np.random.default_rng(0).random(w.shape) > 0.5
    masks = {"layers": {"0": {"mlp": {"up_proj": mask}}}}
    # weights NOT zeroed on disk: evaluation must still apply the mask
    sparse_dir = hf.save(str(tmp_path / "sparse"), cfg, params, masks, tokenizer_dir=tiny)
    zeroed = {**params, "layers": {**params["layers"], "0": {**params["layers"]["0"]}}}
    zeroed["layers"]["0"]["mlp"] = {**params["layers"]["0"]["mlp"], "up_proj": np.where(mask, w, 0)}
    zeroed_dir = hf.save(str(tmp_path / "zeroed"), cfg, zeroed, masks, tokenizer_dir=tiny)
    a, b = source.load_model(sparse_dir), source.load_model(zeroed_dir)
    assert a.info["masks"]["weights_already_zero"] is False and b.info["masks"]["weights_already_zero"] is True
    assert a.info["masks"]["mask_sparsity"] == pytest.approx(1 - mask.mean())
    np.testing.assert_array_equal(np.asarray(a.params["layers"]["0"]["mlp"]["up_proj"]), np.where(mask, w, 0))
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, 24))
    ref = torch_logprobs(zeroed_dir, tokens[0].tolist())  # transformers loads the zeroed weights as they are
    from prunejax.evaluate.loglik import token_logprobs

    np.testing.assert_allclose(np.asarray(token_logprobs(a.cfg, a.params, tokens)[0][0]), ref, rtol=1e-4, atol=1e-5)
