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


@dataclass
class Parsed:
    items: list = field(default_factory=list)
    failures: int = 0  # pieces of the reply that could not be read
    cut: int = 0  # items dropped because the reply hit the length limit


_STR = {"type": "string"}
SCHEMAS = {
    "alpaca_tasks": {"type": "object", "required": ["tasks"], "properties": {"tasks": {"type": "array", "items": {
        "type": "object", "required": ["instruction", "input", "output"],
        "properties": {"instruction": _STR, "input": _STR, "output": _STR}}}}},
    "numbered_instructions": {"type": "object", "required": ["instructions"],
                              "properties": {"instructions": {"type": "array", "items": _STR}}},
    "yes_no": {"type": "object", "required": ["is_classification"],
               "properties": {"is_classification": {"type": "boolean"}}},
    "instances": {"type": "object", "required": ["instances"], "properties": {"instances": {"type": "array", "items": {
        "type": "object", "required": ["input", "output"], "properties": {"input": _STR, "output": _STR}}}}},
    "labeled_instances": {"type": "object", "required": ["instances"], "properties": {"instances": {
        "type": "array", "items": {"type": "object", "required": ["class_label", "input"],
                                   "properties": {"class_label": _STR, "input": _STR}}}}},
}
SCHEMAS["judge_verdict"] = {"type": "object", "required": ["winner"],
                            "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}}}
JSON_KEYS = {"alpaca_tasks": "tasks", "numbered_instructions": "instructions", "instances": "instances",
             "labeled_instances": "instances"}


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


def parse_numbered_instructions(text: str, finish_reason: str = "stop", structured: bool = False,
                                start: int | None = None) -> Parsed:
    if structured:
        items, whole = _json_list(text, "instructions")
        good = [_clean(x) for x in items if isinstance(x, str) and _clean(x)]
        return _finish_json(good, len(items), whole, finish_reason)
    if start is not None:  # a completion prompt ended with "N." -- the reply continues item N
        text = f"{start}. " + text.lstrip()
    pieces = re.split(r"(?:^|\n)[ \t]*\d+[ \t]*[.)](?=\s|$)[ \t]*", "\n" + text)
    items = [" ".join(p.split()) for p in pieces[1:]]
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
                             "input": "" if inp.lower() == "<noinput>" else inp})
        return _finish_json(good, len(items), whole, finish_reason)
    if start is not None:
        text = f"{start}. Instruction: " + text.lstrip()
    blocks = [b for b in re.split(r"^\s*###\s*$", text, flags=re.M) if b.strip()]
    cut = 1 if finish_reason == "length" and blocks else 0
    good, failures = [], 0
    for block in blocks[: len(blocks) - cut]:  # a reply cut by max_tokens ends in a half task
        parts = re.split(r"\d+\s*\.\s*(Instruction|Input|Output)\s*:", block)
        fields = dict(zip(parts[1::2], (p.strip() for p in parts[2::2])))
        if len(parts) != 7 or set(fields) != {"Instruction", "Input", "Output"} or not fields["Instruction"]:
            failures += 1
            continue
        inp = fields["Input"]
        good.append({"instruction": _clean(fields["Instruction"]), "output": fields["Output"],
                     "input": "" if inp.lower() in ("<noinput>", "<no input>") else inp})
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


def parse_instances(text: str, finish_reason: str = "stop", structured: bool = False, start: int | None = None
                    ) -> Parsed:
    if structured:
        items, whole = _json_list(text, "instances")
        good = [{"input": (i.get("input") or "").strip(), "output": i["output"].strip()} for i in items
                if isinstance(i, dict) and isinstance(i.get("output"), str)]
        return _finish_json(good, len(items), whole, finish_reason)
    text = re.split(r"\n\s*Task\s*:", text)[0]  # the model may go on to invent the next task
    blocks = [b for b in re.split(r"(?:^|\n)\s*Example\s*\d+\s*:?\s*\n", "\n" + text) if b.strip()]
    good, failures = [], 0
    for block in blocks:
        m = re.match(r"\s*(?:Input\s*:(?P<inp>.*?))?\s*Output\s*:(?P<out>.*)\Z", block, re.S)
        if m:
            good.append({"input": (m.group("inp") or "").strip(), "output": m.group("out").strip()})
        elif "Input" not in block and len(blocks) == 1:  # a no-input task answered directly
            good.append({"input": "", "output": block.strip()})
        else:
            failures += 1
    return _finish(good, failures + (0 if blocks else 1), finish_reason)


def parse_labeled_instances(text: str, finish_reason: str = "stop", structured: bool = False,
                            start: int | None = None) -> Parsed:
    if structured:
        items, whole = _json_list(text, "instances")
        good = [{"input": (i.get("input") or "").strip(), "output": i["class_label"].strip()} for i in items
                if isinstance(i, dict) and isinstance(i.get("class_label"), str)]
        return _finish_json(good, len(items), whole, finish_reason)
    text = re.split(r"\n\s*Task\s*:", text)[0]
    blocks = [b for b in re.split(r"(?:^|\n)\s*Class label\s*:", "\n" + text, flags=re.I)[1:] if b.strip()]
    good, failures = [], 0
    for block in blocks:
        label, _, rest = block.strip().partition("\n")
        body = re.sub(r"^\s*[A-Za-z ]{1,20}:\s*", "", rest.strip(), count=1)  # "Input:", "Sentence:", ...
        if label.strip():
            good.append({"input": body.strip(), "output": label.strip()})
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
SCHEMAS["rating"] = {"type": "object", "required": ["score"],
                     "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}}}


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
