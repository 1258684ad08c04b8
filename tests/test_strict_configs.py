"""Configs and flags are typed strictly, and every error names the file and the key (issue 26, class 5)."""

from __future__ import annotations

import pytest
import yaml

from prunejax import cli
from prunejax.config import ConfigError, LlamaConfig, load_yaml, parse_tokens
from prunejax.prune.sheared_config import load_config as sheared_config
from prunejax.study import config as study_config
from prunejax.train import config as train_config

MINI = yaml.safe_load(open("configs/study/mini.yaml"))


def test_a_key_given_twice_is_an_error_naming_file_line_and_key(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("peak_lr: 3e-4\nseq_len: 64\npeak_lr: 1e-3\n")
    with pytest.raises(ConfigError, match=rf"^{path}: line 3: key 'peak_lr' is given twice \(also on line 1\)$"):
        train_config.load(str(path))
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump(MINI, sort_keys=False) + "ratios: [0.75]\n")
    with pytest.raises(ConfigError, match=rf"^{study}: line \d+: key 'ratios' is given twice"):
        study_config.load(str(study))
    nested = tmp_path / "n.yaml"
    nested.write_text("calibration:\n  samples: 4\n  samples: 8\n")
    with pytest.raises(ConfigError, match=rf"^{nested}: line 3: key 'samples' is given twice"):
        study_config.load(str(nested))


def test_yaml_reads_exponents_without_a_dot_as_floats():
    assert load_yaml("a: 3e-4\nb: 1E5\nc: 12\nd: '1e3'\ne: 1.5\n", "x") == {
        "a": 3e-4,
        "b": 1e5,
        "c": 12,
        "d": "1e3",
        "e": 1.5,
    }


@pytest.mark.parametrize(
    "text, message",
    [
        ("global_batch: true\n", "global_batch: expected a whole number, got True"),
        ("seq_len: 64.0\n", "seq_len: expected a whole number, got 64.0"),
        ("remat: 1\n", "remat: expected true or false, got 1"),
        ("attention: 3\n", "attention: expected a string, got 3"),
        ("data_count: '100'\n", "data_count: "),
    ],
)
def test_train_config_types_are_strict(tmp_path, text, message):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        train_config.load(str(path))
    assert str(e.value).startswith(f"{path}: {message}")
    with pytest.raises(ConfigError, match="^train config defaults with overrides global_batch=true: global_batch: "):
        train_config.load(None, ["global_batch=true"])


def test_sheared_and_model_configs_refuse_booleans_for_counts(tmp_path):
    with pytest.raises(ConfigError, match="batch_size: expected a whole number, got True"):
        sheared_config(None, batch_size=True)
    path = tmp_path / "m.yaml"
    path.write_text(
        "vocab_size: 64\nhidden_size: true\nintermediate_size: 32\nnum_hidden_layers: 2\nnum_attention_heads: 1\n"
        "head_dim: 8\n"
    )
    with pytest.raises(ConfigError, match=rf"^{path}: hidden_size must be a positive integer, got True"):
        LlamaConfig.from_file(str(path))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"retrain_budgets": ["-2k"]}, "retrain_budgets[0]: a token count must be a whole number >= 0, got '-2k'"),
        ({"ratios": ["half"]}, "ratios[0]: expected a number, got 'half'"),
        (
            {"methods": [{"name": "sparsegpt", "pattern": "2:4/../x"}]},
            "methods[0].pattern: pattern '2:4/../x' is not of the form N:M",
        ),
        ({"seeds": [-1]}, "seeds[0]: must be >= 0, got -1"),
        ({"calibration": {"samples": 0}}, "calibration.samples: must be >= 1, got 0"),
        ({"eval": {"batch_size": True}}, "eval.batch_size: expected a whole number, got True"),
        ({"data": {"corpus": "kjv", "val_fraction": 1.5}}, "data.val_fraction: must be < 1, got 1.5"),
        ({"parent": {**MINI["parent"], "tokens": "12q"}}, "parent.tokens: not a token count: '12q'"),
        ({"parent": {**MINI["parent"], "tokens": 1e999}}, "parent.tokens: expected a finite number, got inf"),
        ({"methods": ["wanda", {"name": "magnitude", "ratios": [0.5, "x"]}]}, "methods[1].ratios[1]: expected a"),
        ({"data": {"corpus": "kjv", "shards": 2}}, "data.shards: unknown key"),
        ({"count_pruning_tokens": "yes"}, "count_pruning_tokens: expected true or false, got 'yes'"),
    ],
)
def test_study_config_errors_name_the_file_and_the_key(tmp_path, change, message):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**MINI, **change}, sort_keys=False))
    with pytest.raises(ConfigError) as e:
        study_config.load(str(path))
    assert str(e.value).startswith(f"{path}: {message}"), str(e.value)


def test_a_bad_study_fails_its_dry_run_before_any_work(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**MINI, "seeds": [-1]}, sort_keys=False))
    out = tmp_path / "out"
    assert cli.main(["study", str(path), "--out", str(out), "--dry-run"]) == 1
    assert f"{path}: seeds[0]: must be >= 0, got -1" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("value", ["1e999", "nan", "inf", "--", "-5", "1.5", "lots"])
def test_token_flags_refuse_what_is_not_a_count(tmp_path, capsys, value):
    argv = ["train", f"--tokens={value}", "--scratch", "m.yaml", "--data", "d", "--out", str(tmp_path / "r")]
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's own exit, after its message
        rc = e.code
    assert rc == 2
    assert "argument --tokens: " in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_parse_tokens_reads_every_spelling_and_refuses_non_finite_counts():
    assert [parse_tokens(v) for v in (200000, "2e5", "300k", "1.5M", "50B", "1_000", 2e5)] == [
        200000,
        200000,
        300000,
        1500000,
        50 * 10**9,
        1000,
        200000,
    ]
    for bad in ("1e999", "nan", float("inf"), "-inf", "2.5", True):
        with pytest.raises(ConfigError):
            parse_tokens(bad)
