"""A generation run directory and how it resumes.

    RUN/data.jsonl      accepted records, appended and flushed as they are accepted
    RUN/rejected.jsonl  rejected candidates with their reason
    RUN/config.yaml     run id and every setting used (no secrets: keys stay in the environment)
    RUN/stats.json      counts, rejection reasons, tokens, throughput

All records of one instruction (one per instance) are written with a single write(), so a crash
leaves at most one torn group at the end of data.jsonl; resuming detects it by its line without a
newline, bad JSON, or a group with fewer lines than its `num_instances`, and drops it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from pathlib import Path

import yaml

from generator.errors import UserError

# Settings that change how fast a run goes or where the teacher is, not what it produces:
# they may differ when resuming.
RESUMABLE_CHANGES = {"num_instructions", "concurrency", "teacher_url", "request_timeout", "api_key_env", "force",
                     "out", "max_requests"}


def _read_jsonl_tail_safe(path: Path) -> tuple[list[dict], list[int], int]:
    """Records of a JSONL file we wrote, a torn tail removed: (records, byte offset after each, lines dropped)."""
    if not path.exists():
        return [], [], 0
    data = path.read_bytes()
    records, ends, offset, lines = [], [], 0, data.split(b"\n")
    for i, line in enumerate(lines):
        is_last = i == len(lines) - 1
        if is_last and line == b"":
            break
        try:
            rec = json.loads(line)
            if is_last:  # valid JSON but no newline: the write may have been cut right at the brace
                raise ValueError
        except ValueError:
            if is_last or all(not rest.strip() for rest in lines[i + 1:]):
                return records, ends, 1
            raise UserError(f"{path} line {i + 1}: corrupt record in the middle of the file; "
                            "fix or remove that line, or start a new run with another --out") from None
        records.append(rec)
        offset += len(line) + 1
        ends.append(offset)
    return records, ends, 0


def drop_incomplete_group(records: list[dict]) -> int:
    """How many trailing records belong to an instruction group cut short (0 if none)."""
    if not records:
        return 0
    last = records[-1].get("instruction_id")
    tail = 0
    for rec in reversed(records):
        if rec.get("instruction_id") != last:
            break
        tail += 1
    return tail if tail < records[-1].get("num_instances", 1) else 0


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data_path = self.path / "data.jsonl"
        self.rejected_path = self.path / "rejected.jsonl"
        self.config_path = self.path / "config.yaml"
        self.stats_path = self.path / "stats.json"
        self.records: list[dict] = []
        self.run_id = ""
        self.previous_stats: dict = {}
        self.notes: list[str] = []  # what resuming repaired, for the user
        # from rejected.jsonl when resuming: counts by reason (the file is the source of truth,
        # so they survive kill -9) and instructions that passed novelty but made no record
        self.rejected_counts: dict[str, int] = {}
        self.pool_extra: list[tuple[str, str]] = []

    def open(self, cfg, templates: dict[str, dict], force: bool = False) -> "RunDir":
        """Create the run, or reopen it for resuming (config must match unless force)."""
        self.path.mkdir(parents=True, exist_ok=True)
        new_cfg = dataclasses.asdict(cfg)
        if self.config_path.exists():
            old = yaml.safe_load(self.config_path.read_text()) or {}
            self.run_id = old.get("run_id") or uuid.uuid4().hex[:12]
            changed = {k for k in set(new_cfg) | set(old.get("config", {})) if k not in RESUMABLE_CHANGES
                       and new_cfg.get(k) != old.get("config", {}).get(k)}
            if old.get("templates") != templates:
                changed.add("templates (their text changed)")
            if changed and not force:
                raise UserError(f"{self.path} holds a run with different settings ({', '.join(sorted(changed))}); "
                                "pass --force to continue it with the new ones, or choose a new --out")
            if self.stats_path.exists():
                self.previous_stats = json.loads(self.stats_path.read_text())
        else:
            self.run_id = uuid.uuid4().hex[:12]
        self._repair_and_load()
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"run_id": self.run_id, "config": new_cfg, "templates": templates},
                                      sort_keys=False))
        os.replace(tmp, self.config_path)
        self._data = open(self.data_path, "a", encoding="utf-8")
        self._rejected = open(self.rejected_path, "a", encoding="utf-8")
        return self

    def _repair_and_load(self) -> None:
        records, ends, torn = _read_jsonl_tail_safe(self.data_path)
        partial = drop_incomplete_group(records)
        records = records[: len(records) - partial]
        if torn or partial:
            with open(self.data_path, "r+b") as f:
                f.truncate(ends[len(records) - 1] if records else 0)
            self.notes.append(f"dropped a torn last record group from {self.data_path.name} "
                              f"({torn + partial} line(s)); it will be generated again")
        rejected, rends, rtorn = _read_jsonl_tail_safe(self.rejected_path)
        if rtorn:
            with open(self.rejected_path, "r+b") as f:
                f.truncate(rends[-1] if rejected else 0)
        self.records = records
        counts: dict[str, int] = {}
        for row in rejected:
            counts[row.get("reason", "?")] = counts.get(row.get("reason", "?"), 0) + 1
            if row.get("in_pool") and isinstance(row.get("instruction"), str):
                self.pool_extra.append((row.get("instruction_id", ""), row["instruction"]))
        self.rejected_counts = counts

    def write_group(self, records: list[dict]) -> None:
        """All records of one instruction in one write, then flush: resumable at any crash."""
        self._data.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._data.flush()

    def write_rejected(self, rec: dict) -> None:
        # one whole line per write, flushed: the counts in stats.json are these rows
        self._rejected.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._rejected.flush()

    def write_stats(self, stats: dict) -> None:
        self._rejected.flush()
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats, indent=2))
        os.replace(tmp, self.stats_path)

    def close(self) -> None:
        for f in (self._data, self._rejected):
            f.flush()
            os.fsync(f.fileno())
            f.close()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
