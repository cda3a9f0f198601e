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
    # Drop an instruction that states something instead of asking for something ("Anna is twice as
    # old as Ben."): a small teacher writes many. English word lists; off for Magpie, whose users
    # ask by stating ("My car makes a noise when I brake.").
    drop_statements: bool = True


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
        if self.cfg.drop_statements and is_statement(text):
            return "statement_not_task"
        return None


# What opens a clause that asks for something: imperative verbs, question words, auxiliaries.
# Incomplete on purpose: a miss only means a statement is not caught (below, a statement must
# also *open* like one), never that a task is dropped.
_ASKING = set("""write explain describe list name give tell find identify classify summarize summarise translate
rewrite convert calculate compute solve create generate make suggest recommend provide compare contrast determine
decide choose pick select rank sort order arrange extract count estimate predict evaluate assess rate score check
verify correct fix edit improve paraphrase simplify shorten expand complete continue fill answer respond reply draft
compose design plan outline propose brainstorm define analyze analyse discuss argue justify prove show demonstrate
illustrate use apply add remove delete replace change turn transform reverse split combine merge join group
categorize categorise label tag detect spot highlight mark underline spell conjugate parse format reformat capitalize
punctuate proofread review critique grade judge interpret infer guess imagine pretend act play help teach recall
recite state report express consider assume suppose let take read look match pair offer invent devise formulate
construct build implement code debug optimize optimise refactor document comment come think reorder divide multiply
subtract sum round factor differentiate integrate encode decode encrypt decrypt flag filter keep drop return print
output mention cite quote schedule budget sketch please kindly put prepare assign retell walk weigh reword restate
what how why when where which who whom whose is are was were do does did can could would should will shall may might
must have has had am""".split())
# ... and what opens a statement: determiners and pronouns, or a subject followed by a finite verb.
_STATING = set("the a an this that these those it its there some many most all my our his her their each every no "
               "one two three few several such here".split())
_FINITE = set("is are was were has have had will can does do did must should would could may might isn't aren't "
              "wasn't".split())
_CLAUSE = re.compile(r"(?:^|[.:;!]\s+|,\s+|\n+|\bthen\s+|\band\s+)([A-Za-z']+)")


def is_statement(text: str) -> bool:
    """A sentence that tells instead of asks: no question mark, no clause opening with an asking
    word, and it opens like a statement (a determiner or pronoun, a number, or a subject of one or
    two words followed by "is / are / has / can ..."). On the 772 human-written tasks in seeds/ it
    flags none; on a 135M teacher's self-instruct output it flags a quarter of the kept lines, all
    statements ("The early bird catches the worm", "5 years old, 2018-07-31.")."""
    if "?" in text or any(m.group(1).lower() in _ASKING for m in _CLAUSE.finditer(text)):
        return False
    words = re.findall(r"[A-Za-z0-9']+", text)
    if not words or not text[0].isascii():  # the word lists are English: other scripts are not judged
        return False
    first = words[0].lower()
    if first[0].isdigit() or first in _STATING:
        return True
    # "Anna is twice as old as Ben.", "New York has ...": a capitalised subject, then a finite verb
    return words[0][0].isupper() and any(len(words) > i and words[i].lower() in _FINITE for i in (1, 2))


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
