"""Parsers for teacher replies, one per template `parser:` name, plus their JSON schemas.

Each parser reads either the numbered text format of the Self-Instruct / Alpaca prompts or, when
the teacher decoded under a JSON schema (vLLM's guided decoding), the JSON form. Broken pieces
are counted as failures, never raised. When the reply hit the length limit the last item may be
cut, so it is dropped (Self-Instruct and Alpaca both do this).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from generator.novelty import rouge_l


@dataclass
class Parsed:
    items: list = field(default_factory=list)
    failures: int = 0  # pieces of the reply that could not be read
    cut: int = 0  # items dropped because the reply hit the length limit


_STR = {"type": "string"}


def _obj(**props) -> dict:
    """A JSON-schema object with exactly these (all required) properties. OpenAI's strict mode
    requires `additionalProperties: false` on every object; vLLM accepts it too."""
    return {"type": "object", "required": list(props), "properties": props, "additionalProperties": False}


def _list_of(key: str, item: dict) -> dict:
    return _obj(**{key: {"type": "array", "items": item}})


SCHEMAS = {
    "alpaca_tasks": _list_of("tasks", _obj(instruction=_STR, input=_STR, output=_STR)),
    "numbered_instructions": _list_of("instructions", _STR),
    "yes_no": _obj(is_classification={"type": "boolean"}),
    "instances": _list_of("instances", _obj(input=_STR, output=_STR)),
    "labeled_instances": _list_of("instances", _obj(class_label=_STR, input=_STR)),
    "judge_verdict": _obj(winner={"type": "string", "enum": ["A", "B", "tie"]}),
}


def response_format(parser: str) -> dict:
    """OpenAI `response_format` asking for JSON that matches the parser's schema."""
    return {"type": "json_schema", "json_schema": {"name": parser, "schema": SCHEMAS[parser], "strict": True}}


def _json_list(text: str, key: str) -> tuple[list, bool]:
    """Items of the list under `key`; for a cut reply, the items that were complete. (items, whole?)"""
    try:
        obj = json.loads(text)
        value = obj.get(key) if isinstance(obj, dict) else None
        return (value, True) if isinstance(value, list) else ([], False)
    except json.JSONDecodeError:
        pass
    m = re.search(r'"%s"\s*:\s*\[' % re.escape(key), text)
    if not m:
        return [], False
    dec, pos, items = json.JSONDecoder(), m.end(), []
    while True:
        pos = len(text) - len(text[pos:].lstrip(" \n\r\t,"))
        try:
            item, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            return items, False
        items.append(item)


def _clean(s) -> str:
    """One-line text; a list number the model copied from the prompt ("7. Do x") is not content."""
    if not isinstance(s, str):
        return ""
    return re.sub(r"^\d{1,3}\s*[.)]\s+", "", " ".join(s.split()))


def _finish(items: list, failures: int, finish_reason: str) -> Parsed:
    # A text reply cut by max_tokens may end in a half-written item: drop it.
    cut = 0
    if finish_reason == "length" and items:
        items, cut = items[:-1], 1
    return Parsed(items, failures, cut)


def _finish_json(good: list, n_items: int, whole: bool, finish_reason: str) -> Parsed:
    """JSON recovery only ever returns complete items; a reply that is not whole JSON was cut
    (length limit) or is garbage (a parse failure)."""
    bad = n_items - len(good)
    if whole:
        return Parsed(good, bad)
    if finish_reason == "length":
        return Parsed(good, bad, 1)
    return Parsed(good, bad + 1)


# --- what real teachers write around the format -------------------------------------------------
# Larger chat teachers wrap the papers' formats in markdown and chatter; these undo that before a
# parser reads the format. tests/replies/ holds real replies and hand-written ones in that style.

# "**Input:**", "__Output__:", "- **Class label:**", "4. **Instruction:**" -> plain labels.
# A bullet before the label goes too; an item number ("4.") stays.
_BOLD_LABEL = re.compile(r"^([ \t]*)(?:[-*+][ \t]+)?((?:\d+[ \t]*[.)][ \t]+)?)(?:\*\*|__)([^*_\n:]{1,40}?)[ \t]*(:?)[ \t]*"
                         r"(?:\*\*|__)[ \t]*(:?)", re.M)
# An example header, however dressed: "Example 1", "Example 1:", "**Example 1**", "### Example 1",
# "Example #2." -- alone on its line, or followed by the example's first field label.
_HEADER = re.compile(r"^[ \t>#*_-]*(?:Example|Instance)[ \t]*#?[ \t]*(\d+)[ \t]*[:.)]?[ \t*_]*:?[ \t]*"
                     r"(?:$\n?|(?=(?:Input|Output|[A-Z][A-Za-z]*(?:[ \t]\d+)?)[ \t]*:))", re.M | re.I)
# A chat opener that is not content: "Sure!", "Certainly, here are three examples:", "Here are
# some examples:" (a "Here is ..." line only when it ends with a colon, i.e. introduces the rest).
_FILLER = re.compile(r"\A\s*(?:(?:sure|certainly|of course|absolutely|okay|ok|great|alright)\b[^\n]*"
                     r"|(?:here(?:'s| is| are)|below (?:is|are))\b[^\n]*:[ \t*]*)(?:\n|\Z)", re.I)
# A chat closer after the last example: "I hope this helps!", "Let me know if ...".
_CLOSER = re.compile(r"\n[ \t]*\n[ \t]*(?:I hope|Hope (?:this|these)|Let me know|Feel free|I've|I have|These examples"
                     r"|Each example|Note:|\(Note)[^\n]*\s*\Z", re.I)
_TASK_LINE = re.compile(r"^[ \t]*Task[ \t]*:", re.M | re.I)
# A field label at the start of a line: "Input:", "Sentence:", "Sentence 2:", "Question 1:",
# "Customer review:" -- a capitalised word, up to three more words, an optional number.
_FIELD = re.compile(r"^[ \t]*([A-Z][A-Za-z'/-]*(?:[ \t][A-Za-z'/-]+){0,3}(?:[ \t]*\d+)?)[ \t]*:", re.M)
_INLINE_LABEL = re.compile(r"(?:^|\s)[A-Z][A-Za-z]*(?:[ \t]\d+)?:(?:\s|$)")
_NO_INPUT = {"", "<noinput>", "<no input>", "none", "n/a", "(none)", "no input", "-", "empty", "(empty)"}


def _plain_label(m: re.Match) -> str:
    # only bold that holds or precedes a colon is a label; other bold text is left alone
    return f"{m.group(1)}{m.group(2)}{m.group(3)}:" if m.group(4) or m.group(5) else m.group(0)


def _unmark(text: str) -> str:
    """Bold labels to plain ones, dressed example headers to "Example N\n"."""
    text = _BOLD_LABEL.sub(_plain_label, text)
    return _HEADER.sub(lambda m: f"Example {m.group(1)}\n", text)


def _drop_chatter(text: str) -> str:
    """Without a chat opener ("Sure! Here are three examples:") and closer ("I hope this helps!")."""
    text = _CLOSER.sub("", text)
    for _ in range(2):  # "Sure!" then "Here are three examples:"
        m = _FILLER.match(text)
        if not m or not text[m.end():].strip():
            break
        text = text[m.end():]
    return text


def _field_value(text: str) -> str:
    """An example's input: without its label when it has one ("Input:", "Sentence:",
    "Question:"), with every label when it has several fields ("Sentence 1: ...\nSentence 2: ...")."""
    text = re.sub(r"\A\s*Input[ \t]*:[ \t]*", "", text.strip(), flags=re.I).strip()
    m = _FIELD.match(text)
    if m and not _INLINE_LABEL.search(text, m.end()):  # one labelled field: the label is not input
        text = text[m.end():].strip()
    return "" if text.lower() in _NO_INPUT else text


def _own_part(text: str, task: str | None) -> str:
    """The part of an instance reply that answers `task`, chatter and markdown undone. A reply
    that opens with "Task: ..." either echoes our task (a chat habit: the examples follow) or, as
    small teachers do, continues the few-shot pattern with a task of its own: its examples are
    not ours. Which one needs the task (an echo may reword it a little: ROUGE-L F >= 0.5 counts),
    so without it a "Task:" opening means nothing is ours.
    Anything after a later "Task:" is a next task the model went on to invent."""
    text = _drop_chatter(_unmark(text))
    if _TASK_LINE.match(text):
        first, _, rest = text.partition("\n")
        echoed = first.split(":", 1)[1]
        text = rest if task is not None and rouge_l(echoed, task, tokenizer="unicode") >= 0.5 else ""
    return _TASK_LINE.split(text)[0]


def _instance_blocks(text: str, task: str | None) -> list[str]:
    """A reply to an instance prompt, cut into example blocks."""
    text = _own_part(text, task)
    return [b for b in re.split(r"(?:^|\n)[ \t]*Example (?:\d+)\n", "\n" + text) if b.strip()]


# --- parsers ------------------------------------------------------------------------------------


def parse_numbered_instructions(text: str, finish_reason: str = "stop", structured: bool = False,
                                start: int | None = None) -> Parsed:
    if structured:
        items, whole = _json_list(text, "instructions")
        good = [_clean(x) for x in items if isinstance(x, str) and _clean(x)]
        return _finish_json(good, len(items), whole, finish_reason)
    if start is not None:  # a completion prompt ended with "N." -- the reply continues item N
        text = f"{start}. " + text.lstrip()
    pieces = re.split(r"(?:^|\n)[ \t]*\d+[ \t]*[.)](?=\s|$)[ \t]*", "\n" + text)
    # An item is one paragraph: a chat teacher's closing remark after a blank line is not part
    # of the last item. Bold around a whole item ("**Write a poem.**") is markup, not content.
    items = [" ".join(re.split(r"\n[ \t]*\n", p.strip())[0].split()) for p in pieces[1:]]
    # A small teacher may number twice ("1. 2. Do x"): _clean drops the copied number.
    items = [_clean(re.sub(r"^(\*\*|__)(.+)\1$", r"\2", p)) for p in items]
    good = [p for p in items if p]
    return _finish(good, len(items) - len(good) + (0 if pieces[1:] else 1), finish_reason)


def parse_alpaca_tasks(text: str, finish_reason: str = "stop", structured: bool = False, start: int | None = None
                       ) -> Parsed:
    if structured:
        items, whole = _json_list(text, "tasks")
        good = []
        for t in items:
            if isinstance(t, dict) and _clean(t.get("instruction")) and isinstance(t.get("output"), str):
                inp = (t.get("input") or "").strip()
                good.append({"instruction": _clean(t["instruction"]), "output": t["output"].strip(),
                             "input": "" if inp.lower() in _NO_INPUT else inp})
        return _finish_json(good, len(items), whole, finish_reason)
    if start is not None:
        text = f"{start}. Instruction: " + text.lstrip()
    text = _BOLD_LABEL.sub(_plain_label, text)
    # Tasks are separated by "###"; a teacher that leaves the separators out still starts each
    # task with "N. Instruction:".
    blocks = [b for b in re.split(r"^[ \t]*###[ \t]*$|^(?=[ \t]*\d+[ \t]*\.[ \t]*Instruction[ \t]*:)", text, flags=re.M)
              if b and b.strip()]
    blocks = [b for b in blocks if re.search(r"\d+\s*\.\s*(?:Instruction|Input|Output)\s*:", b)] or blocks
    cut = 1 if finish_reason == "length" and blocks else 0
    good, failures = [], 0
    for block in blocks[: len(blocks) - cut]:  # a reply cut by max_tokens ends in a half task
        parts = re.split(r"\d+\s*\.\s*(Instruction|Input|Output)\s*:", block)
        fields = dict(zip(parts[1::2], (p.strip() for p in parts[2::2])))
        # Small teachers often leave out the "N. Input:" line of a task that needs none.
        if len(parts) != 1 + 2 * len(fields) or not {"Instruction", "Output"} <= set(fields) or not fields["Instruction"]:
            failures += 1
            continue
        inp = fields.get("Input", "")
        good.append({"instruction": _clean(fields["Instruction"]), "output": fields["Output"],
                     "input": "" if inp.lower() in _NO_INPUT else inp})
    return Parsed(good, failures + (0 if blocks else 1), cut)


def parse_yes_no(text: str, finish_reason: str = "stop", structured: bool = False, start: int | None = None
                 ) -> Parsed:
    if structured:
        try:
            value = json.loads(text).get("is_classification")
            if isinstance(value, bool):
                return Parsed([value])
        except (json.JSONDecodeError, AttributeError):
            pass
        return Parsed([], 1)
    word = re.match(r"\s*\W*(yes|no)\b", text, re.I)
    return Parsed([word.group(1).lower() == "yes"]) if word else Parsed([], 1)


_OUTPUT = re.compile(r"^[ \t]*Output[ \t]*:[ \t]*", re.M | re.I)
_OUTPUT_ALT = re.compile(r"^[ \t]*(?:Answer|Response)[ \t]*:[ \t]*", re.M | re.I)


def parse_instances(text: str, finish_reason: str = "stop", structured: bool = False, start: int | None = None,
                    task: str | None = None) -> Parsed:
    """`task`: the instruction the examples are for (see `_own_part`)."""
    if structured:
        items, whole = _json_list(text, "instances")
        good = [{"input": _field_value(i.get("input") or ""), "output": i["output"].strip()} for i in items
                if isinstance(i, dict) and isinstance(i.get("output"), str)]
        return _finish_json(good, len(items), whole, finish_reason)
    blocks = _instance_blocks(text, task)
    good, failures = [], 0
    for block in blocks:
        # Everything before the first "Output:" is the input (labelled "Input:" or "Sentence:",
        # or several labelled fields); everything after it is the output, labels and all.
        m = _OUTPUT.search(block) or _OUTPUT_ALT.search(block)
        if m:
            good.append({"input": _field_value(block[:m.start()]), "output": block[m.end():].strip()})
        elif len(blocks) == 1 and not _looks_like_input(block):  # a no-input task answered directly
            good.append({"input": "", "output": block.strip()})
        else:
            failures += 1
    return _finish(good, failures + (0 if blocks else 1), finish_reason)


def _looks_like_input(block: str) -> bool:
    """"Input: ..." or "Sentence: The cat sat." without an output is an input alone; a heading
    such as "Ingredients:" on a line of its own starts an answer."""
    m = _FIELD.match(block.strip())
    return bool(m) and (m.group(1).lower() == "input" or bool(block.strip()[m.end():].split("\n", 1)[0].strip()))


def parse_labeled_instances(text: str, finish_reason: str = "stop", structured: bool = False,
                            start: int | None = None, task: str | None = None) -> Parsed:
    """`task`: the instruction the examples are for (see `_own_part`)."""
    if structured:
        items, whole = _json_list(text, "instances")
        good = [{"input": _field_value(i.get("input") or ""), "output": i["class_label"].strip()} for i in items
                if isinstance(i, dict) and isinstance(i.get("class_label"), str)]
        return _finish_json(good, len(items), whole, finish_reason)
    text = _own_part(text, task)
    blocks = [b for b in re.split(r"(?:^|\n)[ \t]*(?:Example \d+\n[ \t]*)?Class[ \t]*label[ \t]*:", "\n" + text,
                                  flags=re.I)[1:] if b.strip()]
    good, failures = [], 0
    for block in blocks:
        label, _, rest = block.strip().partition("\n")
        label = re.sub(r"^(\*\*|__)(.+)\1$", r"\2", label.strip()).strip()
        if label:
            good.append({"input": _field_value(rest), "output": label})
        else:
            failures += 1
    return _finish(good, failures + (0 if blocks else 1), finish_reason)


def parse_judge_verdict(text: str, finish_reason: str = "stop", structured: bool = False,
                        start: int | None = None) -> Parsed:
    """"A", "B" or "tie"; anything else is no verdict (counted by the caller, never a silent zero)."""
    if structured:
        try:
            value = json.loads(text).get("winner")
        except (json.JSONDecodeError, AttributeError):
            value = None
        return Parsed([value]) if value in ("A", "B", "tie") else Parsed([], 1)
    m = re.match(r"\s*(?:response\s*)?\**\s*(A|B|tie)\b", text, re.I)
    if not m:
        return Parsed([], 1)
    word = m.group(1)
    return Parsed(["tie" if word.lower() == "tie" else word.upper()])


PARSERS = {
    "numbered_instructions": parse_numbered_instructions,
    "alpaca_tasks": parse_alpaca_tasks,
    "yes_no": parse_yes_no,
    "instances": parse_instances,
    "labeled_instances": parse_labeled_instances,
    "judge_verdict": parse_judge_verdict,
}


# -- a rubric judge's 1-10 rating (prompts/rate.jinja, generator/scoring.py) ------------------------
SCHEMAS["rating"] = _obj(score={"type": "integer", "minimum": 1, "maximum": 10})


def parse_rating(text: str, finish_reason: str = "stop", structured: bool = False, start: int | None = None
                 ) -> Parsed:
    """An integer score 1-10; anything else is no rating (the caller records None, not a zero)."""
    value = None
    if structured:
        try:
            value = json.loads(text).get("score")
        except (json.JSONDecodeError, AttributeError):
            value = None
    else:
        m = re.match(r"\s*\**\s*(?:score\s*:?\s*)?(\d{1,2})\b", text, re.I)
        value = int(m.group(1)) if m else None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10:
        return Parsed([value])
    return Parsed([], 1)


PARSERS["rating"] = parse_rating


def parse_response(text: str, finish_reason: str = "stop", structured: bool = False, start: int | None = None
                   ) -> Parsed:
    """A free-form answer is its own parse; whether it is any good is generator.scoring's job."""
    return Parsed([text.strip()])


PARSERS["response"] = parse_response
FREE_FORM = frozenset({"response"})  # parsers whose reply is the answer itself: no schema, no goldens


# Which parsers a stage can consume: the pipeline reads each stage's reply into a fixed shape (a
# list of instructions, of tasks, a yes/no...). A template is refused at load time, before any
# request, when its parser is unknown or does not fit its stage.
STAGE_PARSERS = {
    "alpaca": {"alpaca_tasks"},
    "bootstrap": {"numbered_instructions"},
    "classify": {"yes_no"},
    "instances_input_first": {"instances", "labeled_instances"},
    "instances_output_first": {"instances", "labeled_instances"},
    "respond": {"response"},
    "followup": {"response"},
    "rate": {"rating"},
    "judge": {"judge_verdict"},
}
