"""Typed stage configs filled from a YAML file and CLI flags (flags win).

Each stage (serve, generate, train, eval) has one dataclass. `load_config` merges, in order:
the dataclass defaults, the YAML file's keys, then the flags the user actually gave. Unknown YAML
keys and values of the wrong type are user errors that name the file and the key. A dataclass may
list `YAML_ALIASES` (a ClassVar: {name users bring from another tool: our field}), so a
TrainingArguments-style YAML (`learning_rate`, `per_device_train_batch_size`...) reads as is.

Each field also holds its flag (`setting`: help, choices, argparse group); `add_flags` makes the
flags from it. What a stage saves of its settings (`save_config`; a generation run's config.yaml)
is again something `--config` reads.
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


# --- flags from the dataclass ------------------------------------------------------------------
# A setting's flag lives in its field's metadata (help, choices, metavar, group), as TRL's configs
# hold theirs; `add_flags` builds the argparse flags from it. So the default shown in --help is
# the dataclass default, a field cannot lack a flag without saying so (`flag=False`: YAML only),
# and YAML keys, flags and docs name the same settings.

def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
            choices: tuple | list | None = None, metavar: str | None = None, group: str | None = None,
            flag: str | bool | None = None, shown: str | None = None, repeat: str = "append",
            positional: bool = False) -> Any:
    """A config field with its flag. `shown`: how --help states the default when the value alone
    says too little ("the model's own"); "" shows none. `flag`: another flag name ("--no-x"
    for a bool that is on by default), or False for a YAML-only setting. `repeat`, for a list:
    "append" (the flag repeats) or "csv" (one flag, comma-separated). `positional`: an optional
    positional argument (`sprout report RUN`) instead of a flag."""
    meta = {"help": help, "choices": choices, "metavar": metavar, "group": group, "flag": flag, "shown": shown,
            "repeat": repeat, "positional": positional}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def same_as(cls: type, name: str, **changes: Any) -> Any:
    """The field `name` of `cls` again (default and flag), for a stage that takes the same setting
    as another (`sprout score` and `sprout generate` both take ScoreConfig's); `changes` replace
    parts of its metadata, e.g. `shown=` where the default means something else here."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = {**f.metadata, **changes}
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory, metadata=meta)
    return dataclasses.field(default=f.default, metadata=meta)


def _split_csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _flag_type(tp: Any) -> Any:
    """The type argparse converts a flag's string to: the annotation without None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)][:1] or (str,)
    return tp


def default_text(f: dataclasses.Field) -> str:
    """The default as --help states it ('' when there is nothing useful to say)."""
    if f.metadata.get("shown") is not None:
        return f.metadata["shown"]
    if str(f.metadata.get("flag") or "").startswith("--no-"):  # "--no-judge (default: on)" reads backwards
        return ""
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if value is None or value == "" or value == []:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that have a flag, in declaration order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata and f.metadata.get("flag") is not False]


def add_flags(parser, cls: type) -> None:
    """One flag per field of `cls`; every flag defaults to None, so only the flags a
    user gives override --config and the dataclass defaults (load_config)."""
    import argparse

    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in flag_fields(cls):
        m = f.metadata
        target = parser
        if m["group"]:
            target = groups.get(m["group"]) or groups.setdefault(m["group"], parser.add_argument_group(m["group"]))
        shown = default_text(f)
        text = m["help"] + (f" (default: {shown})" if shown else "")
        kw: dict[str, Any] = {"default": None, "help": text.replace("%", "%%")}
        if m.get("positional"):
            target.add_argument(f.name, nargs="?", metavar=m["metavar"] or f.name.upper(), **kw)
            continue
        kw["dest"] = f.name
        if m["metavar"]:
            kw["metavar"] = m["metavar"]
        tp = _flag_type(hints[f.name])
        name = m["flag"] or "--" + f.name.replace("_", "-")
        if tp is bool:
            # --x / --no-x: either can override a YAML value; "--no-x" alone for a named negation
            kw["action"] = "store_false" if name.startswith("--no-") else argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list:
            if m["repeat"] == "csv":
                kw["type"] = _split_csv
            else:
                kw["action"] = "append"
        else:
            kw["type"] = tp
        if m["choices"]:
            kw["choices"] = m["choices"]
        target.add_argument(name, **kw)


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
        data = read_yaml(yaml_path)
        if isinstance(data.get("config"), dict) and "run_id" in data:
            # a generation run's own RUN/config.yaml (run id, settings, input hashes): its settings
            # rerun as they are, e.g. `sprout generate --config RUN/config.yaml --out RUN2`
            data = data["config"]
        for key, value in data.items():
            k = str(key).replace("-", "_")
            k = aliases.get(k, k)
            if k in given:
                raise UserError(f"{yaml_path}: {given[k]!r} and {key!r} both set {k}; keep one")
            given[k] = str(key)
            if k not in names:
                raise UserError(f"{yaml_path}: unknown setting {key!r}; known: {', '.join(sorted(names))}")
            values[k] = _check_type(value, hints[k], f"{yaml_path}: {key}")
            _check_choice(cls, k, values[k], f"{yaml_path}: {key}")
    for k, value in (overrides or {}).items():
        if value is not None and k in names:
            values[k] = _check_type(value, hints[k], f"--{k.replace('_', '-')}")
            _check_choice(cls, k, values[k], f"--{k.replace('_', '-')}")
    return cls(**values)


def check_choices(cfg: Any) -> None:
    """Every setting with choices holds one of them: for a config built in code (a benchmark, a
    test, the demo) as load_config does for YAML and flags."""
    for f in dataclasses.fields(cfg):
        _check_choice(type(cfg), f.name, getattr(cfg, f.name), "--" + f.name.replace("_", "-"))


def _check_choice(cls: type, name: str, value: Any, where: str) -> None:
    """A setting with choices (in its field's metadata) gets one of them, from YAML as from a flag
    (argparse checks only the flags), before any stage starts."""
    choices = next((f.metadata.get("choices") for f in dataclasses.fields(cls) if f.name == name), None)
    if choices and value is not None and value not in choices:
        raise UserError(f"{where} {value!r}: choose one of {', '.join(map(str, choices))}")


def defaults(cfg_or_cls: Any) -> dict:
    """The default of every setting of a config dataclass (or of its class) that has one: what a
    setting newer than a saved config stands for when that config is read back for a resume."""
    out = {}
    for f in dataclasses.fields(cfg_or_cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def to_dict(cfg: Any) -> dict:
    """Plain dict of a config for writing to disk (secrets are never config fields)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """A stage's settings as flat YAML, the shape `--config` reads: every stage that saves its
    settings (train_config.yaml, eval_config.yaml) can be rerun from them as they are."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
