"""YAML mappings into frozen dataclasses, checked against one schema per config before any work.

The train, Sheared and study configs all load this way: `read` parses a YAML file strictly (a key given
twice is an error), `load` lays overrides on top and calls `build`, which validates the whole mapping
against the dataclass's field types with pydantic in strict mode: an unknown key, a `true` where a count
belongs, a string where a number belongs, a negative token count, all fail with the file, the dotted key
and the value, e.g. `study.yaml: methods[1].ratios[0]: expected a number, got 'half'`. A config
dataclass opts into strict types with `__pydantic_config__ = yamlconf.STRICT`. Float fields also accept
numeric strings, because a `key=value` override or an older YAML file may spell `3e-4` as text.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Collection, Mapping
from typing import Annotated, Any, TypeVar

import pydantic

from prunejax import storage
from prunejax.config import ConfigError, as_float, load_yaml, parse_tokens

T = TypeVar("T")
FLOAT_TYPES = (float, "float", "float | None")
# Strict: no bool for an int, no float for an int, no number for a string, no string for a number; lists
# become tuples (the mapping is validated as JSON, where that is the only sequence). Unknown keys are refused.
STRICT = pydantic.ConfigDict(strict=True, extra="forbid")


def _tokens(value: Any) -> int:
    return parse_tokens(value)


# A token count in any spelling `parse_tokens` reads (200000, '2e5', '300k', '1.5M'), as a schema type.
Tokens = Annotated[int, pydantic.BeforeValidator(_tokens)]


def read(path: str) -> Any:
    """The YAML document in `path` ({} when empty); a missing file, invalid YAML or a repeated key is a ConfigError."""
    if not storage.exists(path):
        raise ConfigError(f"{path}: no such config file")
    d = load_yaml(storage.read_file(path), path)
    return {} if d is None else d


def build(cls: type[T], d: Any, where: str, *, kind: str = "", exclude: Collection[str] = ()) -> T:
    """`cls` from mapping `d`, validated against its schema. A non-mapping, an unknown key (`exclude` names
    fields a file may not set), a value of the wrong type, or a check of `cls.__post_init__` that fails is
    a ConfigError starting with `where`."""
    words = f"{kind} " if kind else ""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {words}keys to values, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in exclude}  # type: ignore[arg-type]
    unknown = sorted(set(d) - set(fields), key=str)  # YAML keys need not be strings
    if unknown:
        raise ConfigError(
            f"{where}: unknown {words}key(s) {', '.join(map(str, unknown))}; valid: {', '.join(sorted(fields))}"
        )
    d = dict(d)
    for key, value in d.items():
        if fields[key].type in FLOAT_TYPES and value is not None:  # floats too: YAML's .nan / .inf are refused
            try:
                d[key] = as_float(key, value)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
    _check_plain(d, where, "")
    try:
        return _schema(cls).validate_json(json.dumps(d))
    except pydantic.ValidationError as e:
        raise ConfigError("; ".join(f"{where}: {_problem(err)}" for err in e.errors())) from None


def _check_plain(value: Any, where: str, key: str) -> None:
    """Only what a config field can hold: finite numbers, strings, booleans, null, lists and mappings (not a
    YAML date or set, not `.nan` or `1e999` anywhere); the error names the key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {key}: expected a finite number, got {value!r}")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_plain(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, where, f"{key}[{i}]")
    elif value is not None and not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: {key}: expected plain YAML data, got {type(value).__name__} {value!r}")


@functools.cache
def _schema(cls: type) -> pydantic.TypeAdapter:
    if getattr(cls, "__pydantic_config__", None) != STRICT:
        raise TypeError(f"{cls.__name__} needs `__pydantic_config__ = yamlconf.STRICT` to be read from YAML")
    return pydantic.TypeAdapter(cls)


_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "dataclass_type": "a mapping",
    "dict_type": "a mapping",
}

_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _problem(err: Any) -> str:
    """One pydantic error as `key.sub[2]: what was expected, got value`."""
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    if err["type"] == "value_error":  # a ConfigError of a validator or __post_init__: its own words
        message = str(err["ctx"]["error"])
    elif err["type"] == "unexpected_keyword_argument":
        message = "unknown key"
    elif err["type"] == "missing_argument":
        message = "required key missing"
    elif err["type"] in _BOUNDS:
        op, bound = _BOUNDS[err["type"]], next(iter(err["ctx"].values()))
        message = f"must be {op} {bound:g}, got {err['input']!r}"
    elif err["type"] in _EXPECTED:
        message = f"expected {_EXPECTED[err['type']]}, got {err['input']!r}"
    else:
        message = f"{err['msg']}, got {err['input']!r}"
    return f"{key}: {message}" if key else message


def load(
    cls: type[T], path: str | None, overrides: Mapping[str, Any] | None = None, *, source: str, kind: str = ""
) -> T:
    """`cls` from the mapping in YAML file `path` (or the defaults) with `overrides` on top; errors
    start with the path, or with `source` when there is no file."""
    d = read(path) if path else {}
    if isinstance(d, Mapping):
        d = {**d, **(overrides or {})}
    return build(cls, d, path or source, kind=kind)
