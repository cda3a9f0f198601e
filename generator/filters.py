"""Quality filters of Self-Instruct / Alpaca. Each returns a rejection reason (a short snake_case
name used as the key of the rejection counts) or None. Novelty (ROUGE-L) lives in novelty.py."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

# Words a text-only model cannot act on (Self-Instruct's list and Alpaca's additions).
DEFAULT_BLOCKLIST = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                     "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]


@dataclass
class FilterConfig:
    min_words: int = 4  # Alpaca keeps > 3 words, Self-Instruct 4..150
    max_words: int = 150
    blocklist: list[str] = field(default_factory=lambda: list(DEFAULT_BLOCKLIST))
    max_field_words: int = 1000  # an input or output longer than this is almost always a loop
    # The papers drop instructions that do not start with an ASCII character (their data was
    # English); a French or Chinese dataset turns this off.
    ascii_start: bool = True


class InstructionFilter:
    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        # one regex for the whole blocklist: word-boundary matches, case-insensitive
        words = sorted(cfg.blocklist, key=len, reverse=True)
        self._block = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.I) if words else None

    def __call__(self, text: str) -> str | None:
        text = text.strip()
        if not text:
            return "empty_instruction"
        n = len(text.split())
        if n < self.cfg.min_words:
            return "too_short"
        if n > self.cfg.max_words:
            return "too_long"
        if self._block and self._block.search(text):
            return "blocklisted_word"
        if text.lower().startswith("write a program"):
            return "write_a_program"
        if text[0] in string.punctuation:
            return "starts_with_punctuation"
        if self.cfg.ascii_start and not text[0].isascii():
            return "starts_with_non_ascii"
        return None


def instance_rejection(inp: str, out: str, cfg: FilterConfig) -> str | None:
    inp, out = inp.strip(), out.strip()
    if not out:
        return "empty_output"
    if inp == out:
        return "input_equals_output"
    if out.endswith(":") or inp.endswith(":"):  # a field that stops at a label was cut off
        return "cut_field"
    if len(out.split()) > cfg.max_field_words or len(inp.split()) > cfg.max_field_words:
        return "field_too_long"
    return None


def squash(text: str) -> str:
    """Lowercase, runs of whitespace as one space: text compared verbatim, case and spacing aside."""
    return " ".join(text.lower().split())


def copies_shown(field: str, shown: str) -> bool:
    """A field taken from the prompt's worked examples: 8 or more characters found there verbatim
    (case and spacing aside). `shown` is `squash`ed prompt text without the task itself."""
    f = squash(field)
    return len(f) >= 8 and f in shown


def clean_instances(instances: list[dict], cfg: FilterConfig, shown: str = "",
                    ) -> tuple[list[dict], dict[str, int], str | None]:
    """Keep the good instances of one task: (kept, rejected counts by reason, task-level reason).

    Exact duplicates collapse to one. One non-empty input with different outputs makes the whole
    task unreliable (Self-Instruct drops it); a task without input ("Write a haiku about rain")
    may well have several good outputs, and the paper's code keeps them all. `shown`: the
    prompt's worked examples (few-shot text); an instance whose input or output is copied from them
    is `copies_prompt_example` -- a small teacher fills "Identify the logical fallacy" with the
    shot's "x = price * 0.2"."""
    kept, reasons, outputs_by_input = [], {}, {}
    shown = squash(shown)
    for inst in instances:
        reason = instance_rejection(inst["input"], inst["output"], cfg)
        if reason is None and shown and (copies_shown(inst["input"], shown) or copies_shown(inst["output"], shown)):
            reason = "copies_prompt_example"
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
            continue
        key = inst["input"].strip()
        prev = outputs_by_input.setdefault(key, set())
        if inst["output"].strip() in prev:
            reasons["duplicate_instance"] = reasons.get("duplicate_instance", 0) + 1
            continue
        prev.add(inst["output"].strip())
        kept.append({"input": inst["input"].strip(), "output": inst["output"].strip()})
    conflicting = any(len(v) > 1 for k, v in outputs_by_input.items() if k)
    if conflicting:
        return [], reasons, "conflicting_outputs"
    if not kept:
        return [], reasons, "no_valid_instance"
    return kept, reasons, None
