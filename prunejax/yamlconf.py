"""YAML mappings into frozen dataclasses: unknown keys are errors that list the valid ones.

The train, Sheared and study configs all load this way: `load` reads a YAML file (or nothing, for
the defaults), lays overrides on top and calls `build`, which checks the keys and types. Float
fields accept numeric strings because PyYAML reads `3e-4` (no dot) as a string.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import yaml

from prunejax import storage
from prunejax.config import ConfigError, as_float

T = TypeVar("T")
FLOAT_TYPES = (float, "float", "float | None")


def read(path: str) -> Any:
    """The YAML document in `path` ({} when empty); a missing file or invalid YAML is a ConfigError."""
    if not storage.exists(path):
        raise ConfigError(f"{path}: no such config file")
    try:
        d = yaml.safe_load(storage.read_file(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return {} if d is None else d


def build(cls: type[T], d: Any, where: str, *, kind: str = "", exclude: Collection[str] = ()) -> T:
    """`cls(**d)`. A non-mapping, an unknown key (`exclude` names fields a file may not set), a float
    field that is not a finite number, or a type error is a ConfigError starting with `where`."""
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
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def load(
    cls: type[T], path: str | None, overrides: Mapping[str, Any] | None = None, *, source: str, kind: str = ""
) -> T:
    """`cls` from the mapping in YAML file `path` (or the defaults) with `overrides` on top; errors
    start with the path, or with `source` when there is no file."""
    d = read(path) if path else {}
    if isinstance(d, Mapping):
        d = {**d, **(overrides or {})}
    return build(cls, d, path or source, kind=kind)
