"""`prunejax eval` end to end on a tiny model: results.json contents and clean errors."""

from __future__ import annotations

import glob
import json
import os
import re

import jax
import numpy as np
import pytest
from test_evaluate_loglik import CORPUS, build_model_dir
from test_evaluate_tasks import write_task_dir

from prunejax import cli, hf, tree
from prunejax.data.store import write_data_dir
from prunejax.evaluate import perplexity
from prunejax.evaluate.results import write_results


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    model_dir = build_model_dir(str(root / "model"), max_positions=64)
    text = root / "kjv.txt"
    text.write_text(CORPUS * 3)
    tokens = np.random.default_rng(0).integers(0, 300, 200).astype(np.int32)
    data = write_data_dir(
        str(root / "data"), {"train": [tokens[:50]], "validation": [tokens]}, vocab_size=300, eos_id=0
    )
    return {
        "model": model_dir,
        "text": str(text),
        "data": data,
        "tasks": write_task_dir(str(root / "tasks"), n=3),
        "root": str(root),
    }


def test_eval_writes_complete_results(inputs, capsys) -> None:
    out = f"{inputs['root']}/results.json"
    argv = ["eval", "--model", inputs["model"], "--text", inputs["text"], "--data", inputs["data"]]
    argv += ["--tasks", "all", "--task-data", inputs["tasks"], "--seq-len", "32", "--batch-size", "4", "--out", out]
    assert cli.main(argv) == 0
    r = json.load(open(out))
    assert r["window"] == {"seq_len": 32, "stride": 32}
    cfg, params = hf.load(inputs["model"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(inputs["model"])
    ppl = perplexity.text_perplexity(cfg, params, tok, [inputs["text"]], 32)[inputs["text"]]
    assert r["perplexity"][inputs["text"]]["perplexity"] == pytest.approx(ppl["perplexity"], rel=1e-6)
    assert r["validation_loss"] == pytest.approx(perplexity.validation_loss(cfg, params, inputs["data"], 32), rel=1e-6)
    assert r["validation"]["fingerprint"] == r["fingerprints"][inputs["data"]]
    assert set(r["tasks"]) == {
        "winogrande",
        "arc_challenge",
        "arc_easy",
        "hellaswag",
        "piqa",
        "sciq",
        "boolq",
        "openbookqa",
    }
    assert r["tasks"]["piqa"]["score"] == r["tasks"]["piqa"]["acc_norm"]
    assert r["tasks"]["winogrande"]["score"] == r["tasks"]["winogrande"]["acc"]
    assert r["average"] == pytest.approx(np.mean([t["score"] for t in r["tasks"].values()]))
    assert {"perplexity", "acc", "acc_norm", "validation_loss"} <= set(r["metrics"])
    assert "jax" in r["software"] and r["model"]["layers"] == 2
    assert "average" in capsys.readouterr().out


def test_eval_max_tokens_reads_like_train_tokens(inputs) -> None:
    out = f"{inputs['root']}/capped.json"
    argv = ["eval", "--model", inputs["model"], "--data", inputs["data"], "--seq-len", "32", "--max-tokens", "0.1k"]
    assert cli.main([*argv, "--out", out]) == 0
    cfg, params = hf.load(inputs["model"])
    capped = perplexity.validation_loss(cfg, params, inputs["data"], 32, max_tokens=100)
    assert json.load(open(out))["validation_loss"] == pytest.approx(capped, rel=1e-6)
    # the same numbers on an explicit mesh with the weights fsdp/tp-sharded
    meshed = f"{inputs['root']}/meshed.json"
    assert cli.main([*argv, "--mesh", "data=2,fsdp=2,tp=2", "--out", meshed]) == 0
    assert json.load(open(meshed))["validation_loss"] == pytest.approx(capped, rel=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tasks", "arc_easy,mmlu", "--task-data", "."], "unknown task 'mmlu'; valid tasks: winogrande"),
        (["--tasks", "piqa"], "--tasks needs --task-data"),
        (["--text", "{text}", "--seq-len", "65"], "longer than the model's 64 positions"),
        (["--text", "{empty}"], "the text is empty"),
        (["--data", "{root}"], "not a DATA_DIR"),
        (["--data", "{root}", "--mesh", "data=3"], "needs 3 devices, 8 available"),
    ],
)
def test_eval_errors_are_clean(inputs, capsys, extra, message) -> None:
    empty = f"{inputs['root']}/empty.txt"
    open(empty, "w").close()
    extra = [e.format(text=inputs["text"], empty=empty, root=inputs["root"]) for e in extra]
    rc = cli.main(["eval", "--model", inputs["model"], *extra, "--out", f"{inputs['root']}/bad.json"])
    assert rc == 1
    assert message in capsys.readouterr().err


def test_eval_refuses_to_overwrite(inputs, capsys) -> None:
    out = f"{inputs['root']}/exists.json"
    open(out, "w").close()
    rc = cli.main(["eval", "--model", inputs["model"], "--text", inputs["text"], "--seq-len", "16", "--out", out])
    assert rc == 1 and "exists" in capsys.readouterr().err


def test_package_works_without_lm_eval() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['lm_eval'] = None\n"  # as if lm-eval were not installed
        "from prunejax.evaluate import validation_loss\n"
        "assert 'prunejax.evaluate.harness' not in sys.modules and callable(validation_loss)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _edited_copy(src: str, out: str, path: tuple[str, ...], value: float) -> str:
    """A copy of MODEL_DIR `src` with column 3 of weight `path` set to `value` (tokenizer kept)."""
    cfg, params = hf.load(src)
    params = jax.tree.map(np.asarray, params)
    w = np.array(tree.get_path(params, path))
    w[..., 3] = value
    tree.set_path(params, path, w)
    return hf.save(out, cfg, params, tokenizer_dir=src)


def test_eval_refuses_non_finite_weights_and_results(inputs, capsys) -> None:
    root = inputs["root"]
    nan_model = _edited_copy(inputs["model"], f"{root}/nan_model", ("layers", "1", "mlp", "down_proj"), np.nan)
    out = f"{root}/nan.json"
    argv = ["eval", "--data", inputs["data"], "--seq-len", "32", "--out", out]
    assert cli.main([*argv, "--model", nan_model]) == 1
    assert "nan_model: weight layers/1/mlp/down_proj holds NaN or Inf" in capsys.readouterr().err
    assert not os.path.exists(out)
    # finite weights whose outputs are not: token 3's logit overflows float32, so its log-softmax is NaN
    huge = _edited_copy(inputs["model"], f"{root}/huge_model", ("lm_head",), 3e38)
    assert cli.main([*argv, "--model", huge]) == 1
    assert re.search(r"evaluation result validation/\w+ is (nan|inf)", capsys.readouterr().err)
    assert not os.path.exists(out) and not glob.glob(f"{root}/.nan.json.tmp-*")
    with pytest.raises(ValueError, match="Out of range float"):  # results.json is always valid JSON
        write_results(out, {"perplexity": float("nan")})
    assert not os.path.exists(out) and not glob.glob(f"{root}/.nan.json.tmp-*")


def test_eval_refuses_a_tokenizer_with_auto_map(inputs, capsys) -> None:
    import shutil

    model = f"{inputs['root']}/remote_code_model"
    shutil.copytree(inputs["model"], model)
    path = os.path.join(model, "tokenizer_config.json")
    d = json.load(open(path))
    json.dump({**d, "auto_map": {"AutoTokenizer": ["tok.Evil", None]}}, open(path, "w"))
    argv = ["eval", "--model", model, "--text", inputs["text"], "--seq-len", "16", "--out", f"{model}.json"]
    assert cli.main(argv) == 1
    assert f"{path}: auto_map names custom code" in capsys.readouterr().err
    assert not os.path.exists(f"{model}.json")


def test_evaluate_is_the_cli_without_flags(inputs) -> None:
    from prunejax import evaluate

    out = f"{inputs['root']}/by_function.json"
    results = evaluate(inputs["model"], out=out, data=inputs["data"], seq_len=32, batch_size=4)
    assert json.load(open(out)) == json.loads(json.dumps(results, default=str))
    assert results["validation"]["scored_tokens"] > 0
    with pytest.raises(FileExistsError):  # refused before the evaluation, as the CLI does
        evaluate(inputs["model"], out=out, data=inputs["data"])
    with pytest.raises(ValueError, match="--batch-size must be at least 1, got 0"):  # what argparse checks
        evaluate(inputs["model"], out=f"{inputs['root']}/zero.json", data=inputs["data"], batch_size=0)
