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
# Incomplete: what this list misses is covered below by the conditions a statement must also meet.
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
insert rephrase refute say alphabetize
what how why when where which who whom whose is are was were do does did can could would should will shall may might
must have has had am""".split())
# A statement opens with a determiner or pronoun, a number, or a subject then "is / has ..." ...
_STATING = set("the a an this that these those it its there some many most all my our his her their each every no "
               "one two three few several such here".split())
# ... says something with one of these early on (not inside "things that are red") ...
_SAYS = set("is are was were has have had does do did isn't aren't wasn't weren't doesn't don't".split())
_RELATIVE = set("that which who whom whose where".split())
# ... and is not a request in statement form: addressed to the assistant, an obligation, a lead-in.
_ADDRESSED = set("you your yours yourself let's please should must need needs would could can will shall may "
                 "might".split())
# Clause openings: the start, after sentence punctuation (closing quotes or brackets allowed), a
# comma, a dash, a bracket or an opening quote, "then", "and", "to" ("Your task is to write ...").
_CLAUSE = re.compile(r"""(?:^|[.:;!\u2026]["'\u201d\u2019)\]]*\s+|,\s+|\s[-\u2013\u2014]+\s+|\(\s*|\n+"""
                     r"""|\bthen\s+|\band\s+|\bto\s+|["\u201c])([A-Za-z']+)""")
_NEXT_SENTENCE = re.compile(r"""[.!;:\u2026]["'\u201d\u2019)\]]*\s+\S""")


def is_statement(text: str) -> bool:
    """One sentence that tells instead of asks ("Anna is twice as old as Ben."). Built to miss
    rather than to drop a task: it flags only an English sentence, alone, with no question mark
    or blank to fill, no clause opening with an asking word, not addressed to the assistant nor
    an obligation ("The text should be rewritten ..."), that opens like a statement and has "is /
    are / has / does ..." in its first eight words. A noun phrase ("A haiku about the sea.") is
    not flagged. None of 1,494 tasks written by people is flagged: seeds/ (784, the test), and
    held out Self-Instruct's 175 seed and 252 user-oriented tasks and one prompt of each of 283 T0
    templates. It catches about half the statements a 135M teacher writes (benchmarks/RESULTS.md)."""
    text = text.strip()
    if not text or not text[0].isascii() or "?" in text or "__" in text or text.endswith(":"):
        return False  # other scripts are not judged: the word lists are English
    if "\n" in text or _NEXT_SENTENCE.search(text):
        return False  # a later sentence may ask in words the list lacks ("... is flat. Refute it.")
    if any(m.group(1).lower() in _ASKING for m in _CLAUSE.finditer(text)):
        return False
    words = re.findall(r"[A-Za-z0-9']+", text)
    lower = [w.lower() for w in words]
    if len(words) < 2 or _ADDRESSED.intersection(lower):
        return False
    if not (lower[0][0].isdigit() or lower[0] in _STATING or (words[0][0].isupper() and lower[1] in _SAYS)):
        return False
    return any(w in _SAYS and lower[i - 1] not in _RELATIVE for i, w in enumerate(lower[:8]) if i > 0)


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
