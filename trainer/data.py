"""Reading an instruction dataset from disk into `Example`s, rejecting bad rows with a UserError
that names the file, the row (the line, for JSONL) and the field.

Accepted inputs (the dataset on disk is the contract with the generator): whatever
generator/rows.py reads -- JSONL, JSON, CSV, parquet, an HF `datasets` save_to_disk folder, a
Sprout run or export folder, a folder holding one data file. Each record is either Alpaca-style (`instruction`, optional `input`, `output`) or chat-style
(`messages`: a list of {role, content}; ShareGPT's {from, value} with human/gpt is mapped too).
`Fields` renames the columns for datasets that call them something else.

Preference data (`sprout train --method dpo`, read by `load_pairs`) follows TRL's preference
types: `prompt` / `chosen` / `rejected` as strings (standard) or as lists of {role, content}
(conversational: prompt = the turns before the answer, chosen / rejected = the assistant turn(s));
without `prompt`, chosen and rejected must be whole conversations (TRL's implicit prompt).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from generator.errors import UserError
from generator.record import to_messages
from generator.rows import read_rows

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class Fields:
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    messages: str = "messages"


@dataclass
class Example:
    """One training conversation. Alpaca rows keep their three parts in `alpaca` so a student
    without a chat template gets the classic Alpaca prompt (with its `### Input:` section)."""

    messages: list[dict]
    where: str  # "FILE line N" / "FILE row N", for errors found later (formatting)
    alpaca: tuple[str, str, str] | None = None


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _text(record: dict, key: str, where: str, required: bool) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if key not in record:
        raise UserError(f"{where}: missing field {key!r} (fields present: {', '.join(map(str, record)) or 'none'})")
    if not isinstance(value, str):
        raise UserError(f"{where}: field {key!r}: expected a string, got {_type_name(value)}")
    if required and not value.strip():
        raise UserError(f"{where}: field {key!r} is empty")
    return value


def _messages(value, key: str, where: str) -> list[dict]:
    messages = _turns(value, key, where)
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise UserError(f"{where}: field {key!r}: no non-empty assistant turn to learn from")
    return messages


def _turns(value, key: str, where: str) -> list[dict]:
    """A non-empty list of {role, content} (or ShareGPT {from, value}), roles checked."""
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else _type_name(value)
        raise UserError(f"{where}: field {key!r}: expected a non-empty list of {{role, content}}, got {got}")
    messages = []
    for i, m in enumerate(value):
        at = f"{where}: field {key!r}[{i}]"
        if not isinstance(m, dict):
            raise UserError(f"{at}: expected an object with role and content, got {_type_name(m)}")
        if "role" in m:
            role, content = m.get("role"), m.get("content")
        elif "from" in m:  # ShareGPT
            role, content = SHAREGPT_ROLES.get(m.get("from"), m.get("from")), m.get("value")
        else:
            raise UserError(f"{at}: missing 'role' (or ShareGPT 'from')")
        if role not in ROLES:
            raise UserError(f"{at}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise UserError(f"{at}: content: expected a string, got {_type_name(content)}")
        messages.append({"role": role, "content": content})
    return messages


def to_example(record, where: str, fields: Fields) -> Example:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a record (JSON object), got {_type_name(record)}")
    if fields.messages in record:
        return Example(_messages(record[fields.messages], fields.messages, where), where)
    if fields.instruction not in record and fields.output not in record:
        raise UserError(
            f"{where}: no {fields.messages!r} field and no {fields.instruction!r}/{fields.output!r} fields "
            f"(fields present: {', '.join(map(str, record)) or 'none'}); map your columns with "
            "--instruction-field/--input-field/--output-field or --messages-field")
    instruction = _text(record, fields.instruction, where, required=True)
    extra = _text(record, fields.input, where, required=False)
    output = _text(record, fields.output, where, required=True)
    return Example(to_messages(instruction, extra, output), where, alpaca=(instruction, extra, output))


def load_examples(path: str | Path, fields: Fields = Fields()) -> list[Example]:
    """Every record of `path` as an Example; the first bad record raises a UserError."""
    path = Path(path).expanduser()
    examples = [to_example(record, where, fields) for where, record in read_rows(path)]
    if not examples:
        raise UserError(f"{path}: no examples (empty dataset)")
    return examples


@dataclass
class PreferencePair:
    """One preference row as two conversations sharing the prompt: the loss compares them."""

    chosen: Example
    rejected: Example
    where: str


def _answer(record: dict, key: str, where: str) -> tuple[list[dict], str | None]:
    """(assistant turns, plain text when the field is a string) of `chosen` / `rejected`."""
    value = record.get(key)
    if key not in record:
        raise UserError(f"{where}: missing field {key!r} (fields present: {', '.join(map(str, record)) or 'none'})")
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{where}: field {key!r} is empty")
        return [{"role": "assistant", "content": value}], value
    if not isinstance(value, list):
        raise UserError(f"{where}: field {key!r}: expected a string or a list of {{role, content}}, "
                        f"got {_type_name(value)}")
    return _turns(value, key, where), None


def to_pair(record, where: str) -> PreferencePair:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a record (JSON object), got {_type_name(record)}")
    if "chosen" not in record and "rejected" not in record:
        raise UserError(f"{where}: no 'chosen'/'rejected' fields (fields present: "
                        f"{', '.join(map(str, record)) or 'none'}); DPO needs preference pairs, e.g. "
                        "from `sprout export RUN --format preference`")
    prompt, prompt_text = record.get("prompt"), None
    if prompt is None:  # implicit prompt: whole conversations
        prompt_turns = []
    elif isinstance(prompt, str):
        if not prompt.strip():
            raise UserError(f"{where}: field 'prompt' is empty")
        prompt_turns, prompt_text = [{"role": "user", "content": prompt}], prompt
    elif isinstance(prompt, list):
        prompt_turns = _turns(prompt, "prompt", where)
    else:
        raise UserError(f"{where}: field 'prompt': expected a string or a list of {{role, content}}, "
                        f"got {_type_name(prompt)}")
    sides = []
    for key in ("chosen", "rejected"):
        turns, text = _answer(record, key, where)
        messages = prompt_turns + turns
        if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
            raise UserError(f"{where}: field {key!r}: must end with a non-empty assistant turn")
        if not any(m["role"] != "assistant" for m in messages[:-1]):
            raise UserError(f"{where}: field {key!r}: no prompt before the answer (add a 'prompt' field)")
        alpaca = (prompt_text, "", text) if prompt_text is not None and text is not None else None
        sides.append(Example(messages, f"{where} ({key})", alpaca))
    return PreferencePair(sides[0], sides[1], where)


def load_pairs(path: str | Path) -> list[PreferencePair]:
    """Every record of `path` as a PreferencePair; the first bad record raises a UserError."""
    path = Path(path).expanduser()
    pairs = [to_pair(record, where) for where, record in read_rows(path)]
    if not pairs:
        raise UserError(f"{path}: no preference pairs (empty dataset)")
    return pairs


def split_eval(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out `fraction` of the examples (at least one when fraction > 0), chosen by `seed`."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    n_eval = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])
