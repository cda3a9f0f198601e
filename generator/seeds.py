"""Reading and validating seed tasks before any request is sent.

Accepted: Self-Instruct JSONL (id, name, instruction, instances [{input, output}],
is_classification) and Alpaca rows (instruction, input, output), in any format generator/rows.py
reads (JSONL, JSON, CSV, parquet, an HF datasets folder, a Sprout run). Every problem is a
UserError naming the file, line (or row) and field. The same parser loads eval sets (`sprout
eval`) and decontamination lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from generator.errors import UserError
from generator.rows import read_rows


@dataclass
class SeedTask:
    id: str
    instruction: str
    instances: list[dict] = field(default_factory=list)  # [{"input": str, "output": str}]
    is_classification: bool = False
    name: str = ""


def _text(row: dict, key: str, where: str, required: bool) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise UserError(f"{where}: missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise UserError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _bool(value, where: str) -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", ""):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int):
        return bool(value)
    raise UserError(f"{where}: field 'is_classification' must be true or false, got {value!r}")


def parse_task(row: object, where: str, default_id: str) -> SeedTask:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with an 'instruction' field, got {type(row).__name__}")
    instruction = _text(row, "instruction", where, required=True).strip()
    if not instruction:
        raise UserError(f"{where}: field 'instruction' is empty")
    if "instances" in row:  # Self-Instruct task
        instances = row["instances"]
        if not isinstance(instances, list):
            raise UserError(f"{where}: field 'instances' must be a list of {{input, output}} objects")
        parsed = []
        for j, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise UserError(f"{where}: instances[{j}] must be an object with 'input' and 'output'")
            parsed.append({"input": _text(inst, "input", f"{where} instances[{j}]", False),
                           "output": _text(inst, "output", f"{where} instances[{j}]", True)})
    elif "output" in row:  # Alpaca row
        parsed = [{"input": _text(row, "input", where, False), "output": _text(row, "output", where, True)}]
    else:
        parsed = []
    task_id = row.get("id")
    return SeedTask(id=str(task_id) if task_id not in (None, "") else default_id, instruction=instruction,
                    instances=parsed, is_classification=_bool(row.get("is_classification"), where),
                    name=str(row.get("name") or ""))


def load_seeds(path: str | Path, need_instances: bool = False) -> list[SeedTask]:
    """All tasks of a seed file, validated; ids made unique by position where missing."""
    rows = read_rows(path)
    if not rows:
        raise UserError(f"{path}: no tasks in the file; add at least one")
    tasks, seen = [], set()
    for n, (where, row) in enumerate(rows, 1):
        task = parse_task(row, where, default_id=f"{Path(path).stem}_{n}")
        if need_instances and not task.instances:
            raise UserError(f"{where}: no 'instances' (or 'output') to show as an example")
        if task.id in seen:
            raise UserError(f"{where}: duplicate id {task.id!r}; ids must be unique")
        seen.add(task.id)
        tasks.append(task)
    return tasks
