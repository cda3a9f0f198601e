"""One-way layering: generator/ (teacher, templates, filters, scoring, the generation pipeline)
never names trainer/ -- not by import, not by a module-name string handed to importlib. The
dataset file is the contract between the stages; the CLI and the demo, which need both, live in
trainer/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

GENERATOR = Path(__file__).resolve().parents[1] / "generator"


def _names_trainer(tree: ast.AST) -> list[tuple[int, str]]:
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            hits += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "trainer"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "trainer" and not node.level:
            hits.append((node.lineno, node.module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and re.fullmatch(r"trainer(\.\w+)+(:\w+)?", node.value):
            hits.append((node.lineno, node.value))
    return hits


def test_generator_never_names_trainer():
    offenders = [f"{path.name}:{line} {name}" for path in sorted(GENERATOR.glob("*.py"))
                 for line, name in _names_trainer(ast.parse(path.read_text(encoding="utf-8")))]
    assert offenders == []


def test_the_check_catches_each_way_of_naming_trainer():
    for src in ("import trainer.train", "from trainer import data", "from trainer.evaluate import x",
                "importlib.import_module('trainer.report')"):
        assert _names_trainer(ast.parse(src)), src
    for src in ("import generator.client", "x = 'the trainer reads it'", "from .trainer import y"):
        assert not _names_trainer(ast.parse(src)), src
