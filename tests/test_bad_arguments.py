"""Bad arguments get a specific error naming the argument or file, and nothing is lost (issue 13, class 5)."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import TINY_HF

from prunejax import cli, hf
from prunejax.config import LlamaConfig
from prunejax.data.store import write_data_dir
from prunejax.data.tokenizer import train_bpe
from prunejax.model import init_params


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-args")
    cfg = LlamaConfig.from_hf_dict(TINY_HF)
    model = hf.save(str(root / "model"), cfg, init_params(cfg, jax.random.key(0)))
    tokens = np.random.default_rng(0).integers(1, cfg.vocab_size, 600)
    data = write_data_dir(
        str(root / "data"), {"train": [tokens], "validation": [tokens]}, vocab_size=cfg.vocab_size, eos_id=0
    )
    tok = train_bpe(["some plain text to learn a few merges from"] * 20, str(root / "tok"), vocab_size=270)
    return {"root": root, "model": model, "data": data, "tok": tok}


def _error(argv, capsys) -> str:
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    assert rc not in (0, None), f"{argv} succeeded"
    return capsys.readouterr().err


def _files(path: str) -> dict[str, bytes]:
    return {f: open(os.path.join(path, f), "rb").read() for f in sorted(os.listdir(path))}


def test_out_equal_to_the_input_is_refused_even_with_overwrite(inputs, capsys):
    before = _files(inputs["model"])
    for argv in (
        [
            "prune",
            "--model",
            inputs["model"],
            "--method",
            "magnitude",
            "--ratio",
            "0.5",
            "--out",
            inputs["model"] + "/",
        ],
        ["convert", inputs["model"], "--out", os.path.join(inputs["model"], ".")],
    ):
        assert "is the input" in _error([*argv, "--overwrite"], capsys)
    assert _files(inputs["model"]) == before


@pytest.mark.parametrize("flag", ["--batch-size", "--seq-len", "--stride", "--limit"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_eval_counts_must_be_positive(inputs, capsys, flag, value):
    out = str(inputs["root"] / "r.json")
    err = _error(["eval", "--model", inputs["model"], "--data", inputs["data"], flag, value, "--out", out], capsys)
    assert f"argument {flag}: must be at least 1, got {value}" in err
    assert not os.path.exists(out)


def test_binary_file_given_as_text_names_the_file(inputs, capsys):
    binary = inputs["root"] / "weights.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    out = str(inputs["root"] / "d")
    err = _error(["data", "prepare", "--text", str(binary), "--tokenizer", inputs["tok"], "--out", out], capsys)
    assert f"{binary}: not UTF-8 text" in err


def test_malformed_index_json_names_the_file(inputs, capsys, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(inputs["model"], bad)
    (bad / "model.safetensors.index.json").write_text('{"weight_map": ')
    err = _error(["eval", "--model", str(bad), "--data", inputs["data"], "--out", str(tmp_path / "r.json")], capsys)
    assert f"{bad}/model.safetensors.index.json: not a safetensors index" in err
    (bad / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    err = _error(["eval", "--model", str(bad), "--data", inputs["data"], "--out", str(tmp_path / "r.json")], capsys)
    assert "not a safetensors index (a JSON object with a weight_map)" in err


def test_out_of_the_wrong_kind_is_refused_even_with_overwrite(inputs, capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    prune = ["prune", "--model", inputs["model"], "--method", "magnitude", "--ratio", "0.5", "--out", str(notes)]
    assert "is a file, but this output is a directory" in _error([*prune, "--overwrite"], capsys)
    assert notes.read_text() == "not a model"
    convert = ["convert", inputs["model"], "--out", str(notes), "--overwrite"]
    assert "is a file, but this output is a directory" in _error(convert, capsys)
    results = tmp_path / "results"
    results.mkdir()
    (results / "keep.txt").write_text("mine")
    evaluate = ["eval", "--model", inputs["model"], "--data", inputs["data"], "--out", str(results), "--overwrite"]
    assert "is a directory, but this output is a file" in _error(evaluate, capsys)
    assert (results / "keep.txt").read_text() == "mine" and notes.read_text() == "not a model"


def test_calibration_counts_are_checked_before_the_model_is_read(inputs, capsys, monkeypatch):
    from prunejax import modelio

    def no_loading(*a, **k):
        raise AssertionError("the model was read before the arguments were checked")

    monkeypatch.setattr(modelio, "read", no_loading)
    out = str(inputs["root"] / "pruned")
    wanda = ["prune", "--model", inputs["model"], "--method", "wanda", "--ratio", "0.5", "--calib", inputs["data"]]
    assert "--calib-samples must be at least 1, got 0" in _error([*wanda, "--calib-samples", "0", "--out", out], capsys)
    err = _error([*wanda, "--calib-seq-len", "1", "--out", out], capsys)
    assert "--calib-seq-len must be at least 2 (an input and its next token), got 1" in err
    assert not os.path.exists(out)


def test_calibration_length_defaults_to_the_model_positions_as_eval_does(inputs):
    out = str(inputs["root"] / "pruned-default-len")
    wanda = ["prune", "--model", inputs["model"], "--method", "wanda", "--ratio", "0.5", "--calib", inputs["data"]]
    assert cli.main([*wanda, "--calib-samples", "4", "--out", out]) == 0  # 2048 would exceed the 128 positions
    options = hf.load_provenance(out)["options"]
    assert (options["calib_samples"], options["calib_seq_len"]) == (4, 128)


SWEEP = [  # (argv with {model}, {data}, {out}, {root}; what the error must say)
    (["train", "--config", "{root}/nope.yaml", "--scratch", "tiny", "--data", "{data}", "--tokens", "10k"], "no such"),
    (["train", "--scratch", "tiny", "--data", "{data}", "--tokens", "abc"], "--tokens"),
    (["train", "--scratch", "tiny", "--data", "{data}", "--tokens", "-5"], "--tokens"),
    (["train", "--scratch", "tiny", "--data", "{data}", "--tokens", "10k", "global_batch=0"], "global_batch"),
    (["train", "--scratch", "tiny", "--data", "{data}", "--tokens", "10k", "warmup_frac=2"], "warmup_frac"),
    (["train", "--scratch", "tiny", "--data", "{data}", "--tokens", "10k", "nokey=3"], "nokey"),
    (["train", "--scratch", "tiny", "--data", "{data}", "--tokens", "10k", "grad_accum=3"], "grad_accum"),
    (["train", "--scratch", "tiny", "--data", "{root}/nodata", "--tokens", "10k"], "nodata"),
    (["train", "--init", "{root}/nomodel", "--data", "{data}", "--tokens", "10k"], "nomodel"),
    (["train", "--scratch", "nopreset", "--data", "{data}", "--tokens", "10k"], "nopreset"),
    (["train", "--scratch", "{model}", "--data", "{data}", "--tokens", "10k", "data_offset=99999999"], "outside"),
    (["prune", "--model", "{model}", "--method", "magnitude", "--ratio", "1.2"], "--ratio"),
    (["prune", "--model", "{model}", "--method", "magnitude", "--ratio", "nan"], "--ratio"),
    (["prune", "--model", "{model}", "--method", "magnitude", "--ratio", "0.5", "--pattern", "3:2"], "3:2"),
    (["prune", "--model", "{model}", "--method", "magnitude", "--ratio", "0.5", "--pattern", "2:5"], "2:5"),
    (["prune", "--model", "{model}", "--method", "magnitude", "--ratio", "0.5", "--pattern", "x"], "'x'"),
    (["prune", "--model", "{model}", "--method", "nomethod", "--ratio", "0.5"], "nomethod"),
    (["prune", "--model", "{model}", "--method", "wanda", "--ratio", "0.5"], "--calib"),
    (
        [
            "prune",
            "--model",
            "{model}",
            "--method",
            "wanda",
            "--ratio",
            "0.5",
            "--calib",
            "{data}",
            "--batch-size",
            "0",
        ],
        "--batch-size",
    ),
    (
        [
            "prune",
            "--model",
            "{model}",
            "--method",
            "wanda",
            "--ratio",
            "0.5",
            "--calib",
            "{data}",
            "--calib-samples",
            "100000",
        ],
        "calibration needs",
    ),
    (
        ["prune", "--model", "{model}", "--method", "minitron-width", "--target", "hidden=abc", "--calib", "{data}"],
        "hidden",
    ),
    (
        ["prune", "--model", "{model}", "--method", "minitron-depth", "--target", "layers=0", "--calib", "{data}"],
        "layers",
    ),
    (["prune", "--model", "{model}", "--method", "magnitude", "--ratio", "0.5", "--mesh", "data=3"], "devices"),
    (["prune", "--model", "{root}/nomodel", "--method", "magnitude", "--ratio", "0.5"], "nomodel"),
    (["eval", "--model", "{model}", "--data", "{data}", "--seq-len", "1024"], "--seq-len"),
    (["eval", "--model", "{model}", "--data", "{data}", "--max-tokens", "-1"], "--max-tokens"),
    (["eval", "--model", "{root}/nomodel", "--data", "{data}"], "nomodel"),
    (["eval", "--model", "{model}", "--tasks", "nope"], "nope"),
    (["eval", "--model", "{model}", "--data", "{data}", "--dtype", "int8"], "--dtype"),
    (["convert", "{root}/x.gguf"], "GGUF"),
    (["convert", "{root}/nofile.gguf"], "nofile"),
    (["data", "prepare", "--corpus", "kjv", "--tokenizer", "{root}/notok"], "notok"),
    (["data", "prepare", "--corpus", "kjv", "--tokenizer", "{model}", "--val-fraction", "1.5"], "val_fraction"),
    (["data", "prepare", "--corpus", "kjv+bible", "--tokenizer", "{model}"], "bible"),
    (["data", "train-tokenizer", "--corpus", "kjv", "--vocab-size", "10"], "vocab_size"),
    (["data", "prepare", "--text", "{root}/none*.txt", "--tokenizer", "{model}"], "none*.txt"),
    (["study", "{root}/nope.yaml"], "nope.yaml"),
    (["report", "{root}/nodir"], "stages.json"),
    (["compile-check", "--model", "nopreset", "--topology", "v5p-8"], "nopreset"),
    (["compile-check", "--model", "tiny", "--topology", "nope-99"], "nope-99"),
]
OUT_FLAG = {"train", "prune", "eval", "convert", "data", "study"}


@pytest.mark.parametrize("argv, says", SWEEP, ids=[" ".join(a[:3]) + f" [{i}]" for i, (a, _) in enumerate(SWEEP)])
def test_a_bad_invocation_is_one_clear_error_and_writes_nothing(inputs, capsys, argv, says):
    root = inputs["root"] / "sweep"
    root.mkdir(exist_ok=True)
    (root / "x.gguf").write_text("not gguf")
    out = root / "out"
    fill = {"model": inputs["model"], "data": inputs["data"], "root": str(root), "out": str(out)}
    argv = [a.format(**fill) for a in argv] + (["--out", str(out)] if argv[0] in OUT_FLAG else [])
    err = _error(argv, capsys)  # an exception other than a clean exit would fail here, traceback and all
    assert says in err and "Traceback" not in err, err
    assert not out.exists()
