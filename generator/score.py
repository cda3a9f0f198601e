"""`sprout score`: run the scorers of generator/scoring.py over a dataset that already exists --
a Sprout run (rescoring its kept candidates without asking the teacher again) or any Alpaca /
`messages` dataset a user brings -- and write a scored, filtered copy.

    OUT                  kept rows: the input row plus `scores` (and, for rows that carry
                         `candidates`, the newly selected candidate as the output)
    OUT.rejected.jsonl   dropped rows with their `reason`
    OUT.stats.json       counts: rows, kept, rejections by reason, settings

A row with no `candidates` is one candidate: its own answer. Constraints come from the row's
`constraints` field (Sprout's records and the verifiable eval set carry them).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from generator.config import same_as, setting
from generator.errors import UserError
from generator.record import user_turn
from generator.scoring import ScoreConfig, make_scorer, new_candidate


@dataclass
class ScoreRunConfig:
    data: str = setting("", "a Sprout run directory or an Alpaca / messages dataset (JSONL, JSON, CSV, parquet)",
                        positional=True)
    out: str = setting("", "the scored copy (JSONL); rejected rows go to OUT.rejected.jsonl")
    score: list[str] = same_as(ScoreConfig, "score")
    min_score: float | None = same_as(ScoreConfig, "min_score")
    judge_url: str | None = same_as(ScoreConfig, "judge_url", shown="", help="OpenAI-compatible server of the "
                                    "rating judge (needed for --score judge)")
    judge_model: str | None = same_as(ScoreConfig, "judge_model")
    judge_template: str | None = same_as(ScoreConfig, "judge_template")
    reward_model: str | None = same_as(ScoreConfig, "reward_model")
    tokenizer: str = same_as(ScoreConfig, "tokenizer", help="ROUGE-L words for the answers' consensus: rouge "
                             "(rouge-score's, English) or unicode (words of any script, each CJK character a word)")
    concurrency: int = setting(64, "rows scored at once")

    def score_config(self) -> ScoreConfig:
        import dataclasses

        return ScoreConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ScoreConfig)})


def row_view(row: dict, where: str) -> tuple[str, str, list[dict], list[dict]]:
    """(instruction, input, candidates, constraints) of a Sprout record, Alpaca row or messages row."""
    if isinstance(row.get("messages"), list):
        msgs = row["messages"]
        users = [m for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "assistant":
            raise UserError(f"{where}: 'messages' must end with an assistant turn after a user turn")
        instruction, inp, answer = str(users[-1].get("content", "")), "", str(msgs[-1].get("content", ""))
    elif isinstance(row.get("instruction"), str):
        instruction, inp = row["instruction"], str(row.get("input") or "")
        answer = row.get("output")
        if not isinstance(answer, str) and not row.get("candidates"):
            raise UserError(f"{where}: field 'output' is missing (or give 'candidates')")
    else:
        raise UserError(f"{where}: rows need 'instruction' and 'output' (Alpaca) or 'messages' (chat)")
    if isinstance(row.get("candidates"), list) and row["candidates"]:
        cands = [new_candidate(str(c.get("text", "")), str(c.get("finish_reason") or "stop"))
                 for c in row["candidates"] if isinstance(c, dict)]
    else:
        cands = [new_candidate(answer or "", "stop")]
    constraints = row.get("constraints") if isinstance(row.get("constraints"), list) else []
    return instruction, inp, cands, constraints


def _input_rows(path: str) -> list[tuple[str, dict]]:
    from generator.rows import read_rows

    rows = read_rows(path)
    if not rows:
        raise UserError(f"{path}: no rows to score")
    for where, row in rows:
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object")
    return rows


async def _score_all(cfg: ScoreRunConfig, rows: list[tuple[str, dict]]) -> list[tuple[dict, str | None]]:
    from generator import verifiers

    views = [row_view(row, where) for where, row in rows]
    for (where, _), (_, _, _, cons) in zip(rows, views):
        for c in cons:
            if not isinstance(c, dict) or c.get("type") not in verifiers.TYPES:
                raise UserError(f"{where}: unknown constraint {c!r}; known types are in docs/verifiers.md")
    scorer = make_scorer(cfg.score_config(), None, structured=False)
    sem = asyncio.Semaphore(cfg.concurrency)

    async def one(row, view):
        instruction, inp, cands, cons = view
        async with sem:
            best, reason = await scorer(user_turn(instruction, inp), instruction, inp, cands, cons)
        scored = {**row, "scores": cands[best]["scores"] if best is not None else {}}
        if "candidates" in row and best is not None:
            scored.update(candidates=cands, selected=best, output=cands[best]["text"])
        elif best is None:
            scored["candidates_scored"] = cands
        return scored, reason

    try:
        return await asyncio.gather(*[one(row, v) for (_, row), v in zip(rows, views)])
    finally:
        if scorer.own_client is not None:
            await scorer.own_client.aclose()


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def score(cfg: ScoreRunConfig) -> dict:
    if not cfg.data or not cfg.out:
        raise UserError("usage: sprout score DATA --out SCORED.jsonl (DATA: a run directory or a dataset file)")
    cfg.score_config().validate()
    out = Path(cfg.out)
    if out.resolve() == Path(cfg.data).resolve():
        raise UserError(f"--out {cfg.out}: write the scored copy to a new file, not over the input")
    rows = _input_rows(cfg.data)
    results = asyncio.run(_score_all(cfg, rows))
    kept = [r for r, reason in results if reason is None]
    rejected = [{**r, "reason": reason} for r, reason in results if reason is not None]
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out, kept)
    _write_jsonl(out.with_name(out.name + ".rejected.jsonl"), rejected)
    stats = {"data": cfg.data, "rows": len(rows), "kept": len(kept),
             "rejections": dict(Counter(r["reason"] for r in rejected).most_common()), "config": asdict(cfg)}
    out.with_name(out.name + ".stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def add_score_args(p) -> None:
    from generator.config import add_flags

    add_flags(p, ScoreRunConfig)
    p.set_defaults(func=run_score)


def run_score(args) -> int:
    from generator.config import load_config

    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "func", "command")}
    cfg = load_config(ScoreRunConfig, args.config, overrides)
    stats = score(cfg)
    rej = ", ".join(f"{k} {v}" for k, v in stats["rejections"].items()) or "none"
    print(f"kept {stats['kept']} of {stats['rows']} rows in {cfg.out}; rejected: {rej}", file=sys.stdout)
    return 0
