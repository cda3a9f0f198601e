"""The pieces every section of `sprout report` is built from: escaping (all record text is
teacher output, untrusted), number formatting, tables, the list of sections with its image count,
and lenient readers of the JSON / JSONL files the sections take their numbers from.

Apart from trainer.report so that its run sections and the training / evaluation sections in
trainer.report_train_eval share one copy without importing each other.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from generator.errors import UserError


def e(value) -> str:
    """Escape for HTML text and attribute values: record text may hold markup or script."""
    return html.escape(str(value), quote=True)


def fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def read_jsonl(path: Path) -> list[dict]:
    """Lines of a JSONL file; a torn last line (a job still writing, or killed) is skipped."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                continue
            raise UserError(f"{path} line {n}: not valid JSON") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


class Doc:
    """The page's sections in order, and how many images they inline (the CLI reports the count)."""

    def __init__(self):
        self.sections: list[tuple[str, str, str]] = []  # (anchor, heading, body html)
        self.images = 0

    def img(self, uri: str, alt: str) -> str:
        self.images += 1
        return f'<img src="{uri}" alt="{e(alt)}">'

    def add(self, anchor: str, heading: str, body: str) -> None:
        self.sections.append((anchor, heading, body))


def table(rows: list[tuple], header: tuple | None = None, cls: str = "") -> str:
    head = "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{e(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{head}{body}</table>'


def clip(text: str, n: int = 1500) -> str:
    return text if len(text) <= n else text[:n] + f" … [{len(text) - n} more characters]"
