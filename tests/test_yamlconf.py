"""YAML mappings into dataclasses: unknown keys listed with the valid ones, numeric strings for floats."""

from __future__ import annotations

import dataclasses

import pytest

from prunejax import yamlconf
from prunejax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Knobs:
    __pydantic_config__ = yamlconf.STRICT

    steps: int = 1
    lr: float = 1e-3
    peak: float | None = None
    name: str = "x"
    source: str = ""


def test_build_checks_keys_and_reads_numeric_strings_as_floats():
    k = yamlconf.build(Knobs, {"lr": "3e-4", "peak": 2, "steps": 5}, "here")
    assert k == Knobs(steps=5, lr=3e-4, peak=2.0)
    assert isinstance(k.lr, float) and isinstance(k.peak, float)
    assert yamlconf.build(Knobs, {"name": "7"}, "here").name == "7"  # only float fields are converted
    with pytest.raises(ConfigError, match=r"^here: unknown key\(s\) bar, foo, source; valid: lr, name, peak, steps$"):
        yamlconf.build(Knobs, {"foo": 1, "bar": 2, "source": "s"}, "here", exclude=("source",))
    with pytest.raises(ConfigError, match=r"^f.yaml: unknown knob key\(s\) foo; valid: "):
        yamlconf.build(Knobs, {"foo": 1}, "f.yaml", kind="knob")
    with pytest.raises(ConfigError, match=r"^here: unknown key\(s\) 1, foo; valid: "):  # YAML allows `1: 2`
        yamlconf.build(Knobs, {"foo": 1, 1: 2}, "here")
    with pytest.raises(ConfigError, match="^here: lr must be a number, got 'fast'$"):
        yamlconf.build(Knobs, {"lr": "fast"}, "here")
    with pytest.raises(ConfigError, match="^here: lr must be a number, got True$"):
        yamlconf.build(Knobs, {"lr": True}, "here")
    for bad in ("nan", "inf", "-Infinity", float("nan"), float("inf")):  # YAML gives 'nan' or .nan -> float
        with pytest.raises(ConfigError, match="^here: lr must be a finite number, got "):
            yamlconf.build(Knobs, {"lr": bad}, "here")
    with pytest.raises(ConfigError, match="^here: peak must be a finite number, got "):
        yamlconf.build(Knobs, {"peak": float("-inf")}, "here")
    with pytest.raises(ConfigError, match="^here: expected a mapping of knob keys to values, got list$"):
        yamlconf.build(Knobs, [1, 2], "here", kind="knob")


def test_load_lays_overrides_on_the_file(tmp_path):
    path = tmp_path / "k.yaml"
    path.write_text("steps: 3\nlr: 1e-4\n")
    assert yamlconf.load(Knobs, str(path), {"steps": 4}, source="knobs") == Knobs(steps=4, lr=1e-4)
    assert yamlconf.load(Knobs, None, source="knobs") == Knobs()
    (tmp_path / "empty.yaml").write_text("")
    assert yamlconf.load(Knobs, str(tmp_path / "empty.yaml"), source="knobs") == Knobs()
    with pytest.raises(ConfigError, match=r"^knobs: unknown key\(s\) nope"):
        yamlconf.load(Knobs, None, {"nope": 1}, source="knobs")
    with pytest.raises(ConfigError, match="missing.yaml: no such config file"):
        yamlconf.load(Knobs, str(tmp_path / "missing.yaml"), source="knobs")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping of keys to values, got list"):
        yamlconf.load(Knobs, str(tmp_path / "list.yaml"), source="knobs")
    (tmp_path / "bad.yaml").write_text("steps: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        yamlconf.read(str(tmp_path / "bad.yaml"))
