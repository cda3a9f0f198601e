"""One source per setting (issue 9): each stage's config dataclass holds every setting's help,
default and choices (generator.config.setting); the flags, their --help and the YAML keys come
from it, and what a stage saves of its settings reads back as --config."""

from __future__ import annotations

import pytest


def _stage_configs():
    from generator.dedup import DedupConfig
    from generator.gen_config import GenerateConfig
    from generator.score import ScoreRunConfig
    from generator.server import ServeConfig
    from trainer.config import TrainConfig
    from trainer.demo import DemoConfig
    from trainer.evaluate import EvalConfig
    from trainer.report import ReportConfig

    return [("generate", GenerateConfig), ("train", TrainConfig), ("eval", EvalConfig), ("demo", DemoConfig),
            ("score", ScoreRunConfig), ("dedup", DedupConfig), ("report", ReportConfig), ("serve", ServeConfig)]


def _subparser(name):
    from trainer.cli import build_parser

    return build_parser([name])._subparsers._group_actions[0].choices[name]


def test_every_setting_of_every_stage_has_a_flag():
    """README: YAML and flags name the same settings. A config field without a flag can only be
    set from YAML -- the drift this test stops."""
    import dataclasses

    missing = {}
    for name, cls in _stage_configs():
        dests = {a.dest for a in _subparser(name)._actions}
        missing[name] = [f.name for f in dataclasses.fields(cls) if f.name not in dests]
    assert missing == {k: [] for k in missing}


def test_each_flag_is_declared_once_on_its_field_and_states_the_dataclass_default():
    """One source per setting (issue 9): help and default live in the field (generator.config.
    setting), the flag is generated from it, so --help cannot state another default than the one
    the run uses. A hand-written flag for a config field, a field without its help, or a help text
    that spells out a default of its own fails here."""
    import dataclasses

    from generator.config import default_text

    problems = []
    for name, cls in _stage_configs():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for f in fields.values():
            if "help" not in f.metadata or not f.metadata["help"]:
                problems.append(f"{name}: {f.name} has no help in its metadata (use generator.config.setting)")
            elif "default" in f.metadata["help"].lower():
                problems.append(f"{name}: {f.name}'s help states a default; the dataclass's is shown")
        for action in _subparser(name)._actions:
            f = fields.get(action.dest)
            if f is None or f.metadata.get("flag") is False:
                continue
            shown = default_text(f)
            want = f.metadata["help"] + (f" (default: {shown})" if shown else "")
            if (action.help or "").replace("%%", "%") != want:
                problems.append(f"{name}: {action.option_strings or action.dest} is not generated from its field")
            if action.default is not None:
                problems.append(f"{name}: {action.dest} has an argparse default; --config could not set it")
    assert problems == []


def test_generated_flags_parse_to_the_field_types():
    """The flags add_flags makes: --x/--no-x for a bool, a repeated flag or a comma list for a list,
    the annotated type otherwise; a flag not given stays None (the YAML or the default applies)."""
    from dataclasses import dataclass
    import argparse

    from generator.config import add_flags, load_config, setting

    @dataclass
    class Example:
        runs: int = setting(3, "how many")
        rate: float | None = setting(None, "a rate", shown="the mode's")
        on: bool = setting(True, "a switch")
        files: list[str] = setting(help="files", factory=list, metavar="FILE")
        names: list[str] = setting(help="names", factory=lambda: ["a", "b"], repeat="csv")
        path: str = setting("", "where", positional=True)

    p = argparse.ArgumentParser()
    add_flags(p, Example)
    a = p.parse_args(["here", "--runs", "5", "--no-on", "--files", "x", "--files", "y", "--names", "c, d"])
    assert (a.path, a.runs, a.on, a.files, a.names, a.rate) == ("here", 5, False, ["x", "y"], ["c", "d"], None)
    assert load_config(Example, None, vars(p.parse_args([]))) == Example()
    helps = {act.dest: act.help for act in p._actions}
    assert helps["runs"] == "how many (default: 3)" and helps["rate"] == "a rate (default: the mode's)"
    assert helps["on"] == "a switch (default: on)" and helps["names"] == "names (default: a, b)"


def test_saved_settings_read_back_as_config(tmp_path):
    """One saved shape: what a stage writes of its settings is a --config that gives the same
    settings back -- a generation run's config.yaml (run id + settings + input hashes) and the flat
    YAML of train and eval (generator.config.save_config)."""
    from generator.config import load_config, save_config
    from generator.gen_config import GenerateConfig
    from generator.runs import RunDir
    from trainer.config import TrainConfig
    from trainer.evaluate import EvalConfig

    cfg = GenerateConfig(out=str(tmp_path / "run"), mode="self-instruct", num_instructions=7, blocklist=["x"],
                         template=["respond=my.jinja"], temperature=0.3, ascii_start=False)
    RunDir(tmp_path / "run").open(cfg, {"seeds": "s"}).close()
    assert load_config(GenerateConfig, tmp_path / "run" / "config.yaml") == cfg
    for cls, kw in ((TrainConfig, {"data": "d", "out": "o", "lr": 1e-3, "report_to": ["none"], "merge": True}),
                    (EvalConfig, {})):
        saved = cls(**kw)
        save_config(saved, tmp_path / "saved.yaml")
        assert load_config(cls, tmp_path / "saved.yaml") == saved, cls.__name__


def test_a_yaml_value_outside_the_choices_is_one_line_naming_the_key(tmp_path):
    """Choices live in the field's metadata; argparse checks a flag against them and load_config
    checks a YAML value the same way, whichever stage reads it."""
    from generator.config import load_config
    from generator.errors import UserError
    from generator.gen_config import GenerateConfig
    from trainer.config import TrainConfig

    for cls, key, value in ((GenerateConfig, "mode", "alpacca"), (TrainConfig, "schedule", "cosin"),
                            (TrainConfig, "lr_scheduler_type", "cosin")):
        (tmp_path / "c.yaml").write_text(f"{key}: {value}\n")
        with pytest.raises(UserError, match=rf"c.yaml: {key} '{value}': choose one of"):
            load_config(cls, tmp_path / "c.yaml")
    assert load_config(TrainConfig, None, {"schedule": "linear"}).schedule == "linear"
