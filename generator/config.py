"""Typed stage configs filled from a YAML file and CLI flags (flags win).

Each stage (serve, generate, train, eval) has one dataclass. `load_config` merges, in order:
the dataclass defaults, the YAML file's keys, then the flags the user actually gave. Unknown YAML
keys and values of the wrong type are user errors that name the file and the key. A dataclass may
list `YAML_ALIASES` (a ClassVar: {name users bring from another tool: our field}), so a
TrainingArguments-style YAML (`learning_rate`, `per_device_train_batch_size`...) reads as is.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from generator.errors import UserError
from generator.rows import read_text

T = TypeVar("T")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Coerce `value` to the annotated type where that is lossless; else a UserError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_type(value, args[0], where) if len(args) == 1 else value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_check_type(v, item_tp, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, float) and value.is_integer():  # 3.0 epochs, as HF's YAMLs write them
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: expected a string, got {value!r}")
    return value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of setting: value at the top level")
    return data


def load_config(cls: type[T], yaml_path: str | Path | None = None, overrides: dict | None = None) -> T:
    """Build `cls` from defaults < YAML file < overrides (None values in overrides are ignored)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    aliases = getattr(cls, "YAML_ALIASES", {})
    if yaml_path:
        given: dict[str, str] = {}
        for key, value in read_yaml(yaml_path).items():
            k = str(key).replace("-", "_")
            k = aliases.get(k, k)
            if k in given:
                raise UserError(f"{yaml_path}: {given[k]!r} and {key!r} both set {k}; keep one")
            given[k] = str(key)
            if k not in names:
                raise UserError(f"{yaml_path}: unknown setting {key!r}; known: {', '.join(sorted(names))}")
            values[k] = _check_type(value, hints[k], f"{yaml_path}: {key}")
    for k, value in (overrides or {}).items():
        if value is not None and k in names:
            values[k] = _check_type(value, hints[k], f"--{k.replace('_', '-')}")
    return cls(**values)


def to_dict(cfg: Any) -> dict:
    """Plain dict of a config for writing to disk (secrets are never config fields)."""
    return dataclasses.asdict(cfg)
