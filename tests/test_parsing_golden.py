"""Golden parser tests: every file in tests/replies/ is one teacher reply with the items a person
read out of it by hand. `real_*` files are real replies of the embedded model to our templates
(captured by tests/replies/capture.py with the pipeline's settings); `style_*` files are written
in the style of larger chat teachers (markdown, preambles, closers, other field labels)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generator.parsing import PARSERS
from generator.templates import load_templates

REPLIES = Path(__file__).parent / "replies"
FILES = sorted(REPLIES.glob("*.json"))
PARSER_OF = {stage: t.parser for stage, t in load_templates().items()}


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_reply_parses_as_read_by_hand(path):
    rec = _load(path)
    assert "unchecked" not in rec, f"{path.name}: read the reply and check `expected` by hand first"
    parser = PARSER_OF[rec["stage"]]
    task = {"task": rec["prompt_vars"]["instruction"]} if parser in ("instances", "labeled_instances") else {}
    parsed = PARSERS[parser](rec["reply"], rec["finish_reason"], rec["structured"], rec["start"], **task)
    assert {"items": parsed.items, "failures": parsed.failures, "cut": parsed.cut} == rec["expected"]


def test_the_folder_covers_every_stage_and_both_forms():
    recs = [_load(p) for p in FILES]
    real = [r for r in recs if r["teacher"] == "SmolLM2-135M-Instruct"]
    assert 20 <= len(real) <= 40
    from generator.parsing import FREE_FORM

    assert {r["stage"] for r in real} == {s for s, parser in PARSER_OF.items() if parser not in FREE_FORM}
    assert {(r["structured"], r["api"]) for r in real} >= {(False, "chat"), (True, "chat"), (False, "completion")}
    assert sum(r["expected"]["items"] != [] for r in real) >= len(real) // 2  # not a folder of failures
