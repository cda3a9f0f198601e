"""Reading and validating seed tasks before any request is sent.

Accepted: Self-Instruct JSONL (id, name, instruction, instances [{input, output}],
is_classification), Alpaca rows (instruction, input, output) as a JSON list or JSONL, and CSV or
parquet files with those columns. Every problem is a UserError naming the file, line (or row) and
field. The same reader loads eval sets (`sprout eval`) and decontamination lists.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from generator.errors import UserError
from generator.rows import read_text


@dataclass
class SeedTask:
    id: str
    instruction: str
    instances: list[dict] = field(default_factory=list)  # [{"input": str, "output": str}]
    is_classification: bool = False
    name: str = ""


def _rows_jsonl(path: Path) -> list[tuple[int, object]]:
    rows = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                            "each line must be one JSON object") from None
        except RecursionError:
            raise UserError(f"{path} line {lineno}: JSON nested too deeply") from None
    return rows


def _rows_json(path: Path) -> list[tuple[int, object]]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply") from None
    if isinstance(data, dict):  # {"data": [...]} or {"tasks": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON list of tasks (or JSONL, one task a line)")
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of tasks (or JSONL, one task a line)")
    return [(i, row) for i, row in enumerate(data, 1)]


def _rows_table(path: Path) -> list[tuple[int, object]]:
    if path.suffix == ".csv":
        import io

        return [(i, dict(r)) for i, r in enumerate(csv.DictReader(io.StringIO(read_text(path), newline="")), 2)]
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise UserError(f"{path}: cannot read as parquet ({e})") from None
    return [(i, r) for i, r in enumerate(table.to_pylist(), 1)]


def read_rows(path: str | Path) -> tuple[list[tuple[int, object]], str]:
    """(line or row number, raw row) pairs and the word for the number ("line" or "row")."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix in (".csv", ".parquet"):
        rows, unit = _rows_table(path), ("line" if path.suffix == ".csv" else "row")
    else:
        text_start = path.read_text(encoding="utf-8-sig", errors="replace").lstrip()[:1]
        rows, unit = (_rows_json(path), "item") if text_start == "[" else (_rows_jsonl(path), "line")
    if not rows:
        raise UserError(f"{path}: no tasks in the file; add at least one")
    return rows, unit


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
    rows, unit = read_rows(path)
    tasks, seen = [], set()
    for n, row in rows:
        where = f"{path} {unit} {n}"
        task = parse_task(row, where, default_id=f"{Path(path).stem}_{n}")
        if need_instances and not task.instances:
            raise UserError(f"{where}: no 'instances' (or 'output') to show as an example")
        if task.id in seen:
            raise UserError(f"{where}: duplicate id {task.id!r}; ids must be unique")
        seen.add(task.id)
        tasks.append(task)
    return tasks
