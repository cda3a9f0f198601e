"""Pairwise LLM-judge preference, both orders, with a bootstrap interval.

Each item is judged twice: (base, student) shown as (A, B) and then swapped, which cancels the
judge's position bias. Identical answers are a tie without asking the judge. A verdict scores the
student 1 (win), 0.5 (tie) or 0 (loss); an item's
score is the mean of its readable verdicts. An item with no readable verdict is skipped and
counted -- never scored as a loss -- and a judge that gives no verdict at all is an error.
"""

from __future__ import annotations

import asyncio
import random
import statistics

from generator.client import TeacherClient
from generator.errors import UserError
from generator.parsing import PARSERS, response_format
from generator.resources import data_dir
from generator.templates import Template, make_env


def judge_template(path: str | None = None) -> Template:
    from pathlib import Path

    p = Path(path) if path else data_dir("prompts") / "judge.jinja"
    if not p.is_file():
        raise UserError(f"--judge-template {p}: file not found")
    return Template(p, make_env(p.parent))


async def _verdict(client: TeacherClient, tmpl: Template, item: dict, a: str, b: str, structured: bool,
                   max_tokens: int) -> str | None:
    prompt = tmpl.render(instruction=item["instruction"], input=item.get("input", ""), response_a=a,
                         response_b=b, structured=structured)
    kwargs = {"max_tokens": max_tokens, "temperature": 0.0}
    if structured:
        kwargs["response_format"] = response_format(tmpl.parser)
    out = await client.chat(prompt.messages(), **kwargs)
    parsed = PARSERS[tmpl.parser](out.texts[0], out.finish_reasons[0], structured)
    return parsed.items[0] if parsed.items else None


async def judge_pairs(client: TeacherClient, tmpl: Template, items: list[dict], structured: bool,
                      max_tokens: int = 16) -> list[dict]:
    """For each item (with `base` and `student` answers): verdicts in both orders and a score."""

    async def one(item):
        if item["base"].strip() == item["student"].strip():  # nothing to prefer: a tie, no judge needed
            return {"verdicts": ["identical", "identical"], "score": 0.5}
        first, second = await asyncio.gather(
            _verdict(client, tmpl, item, item["base"], item["student"], structured, max_tokens),   # student = B
            _verdict(client, tmpl, item, item["student"], item["base"], structured, max_tokens))   # student = A
        scores = []
        if first is not None:
            scores.append({"B": 1.0, "tie": 0.5, "A": 0.0}[first])
        if second is not None:
            scores.append({"A": 1.0, "tie": 0.5, "B": 0.0}[second])
        return {"verdicts": [first, second], "score": statistics.mean(scores) if scores else None}

    return await asyncio.gather(*[one(it) for it in items])


def bootstrap_ci(scores: list[float], n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean score over items."""
    if not scores:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    k = len(scores)
    means = sorted(sum(rng.choices(scores, k=k)) / k for _ in range(n))
    lo = means[int((1 - level) / 2 * n)]
    hi = means[min(n - 1, int((1 + level) / 2 * n))]
    return (round(lo, 4), round(hi, 4))


def summarize(judged: list[dict]) -> dict:
    scores = [j["score"] for j in judged if j["score"] is not None]
    verdicts = [v for j in judged for v in j["verdicts"]]
    if judged and not scores:
        raise UserError("the judge returned no readable verdict for any item; check --judge-model "
                        "(a chat model that follows instructions) or --judge-template")
    return {
        "win_rate": round(statistics.mean(scores), 4) if scores else None,
        "win_rate_ci95": list(bootstrap_ci(scores)),
        "judged_items": len(scores), "skipped_items": len(judged) - len(scores),
        "verdicts_missing": sum(v is None for v in verdicts),
        "identical_answers": sum(1 for j in judged if j["verdicts"][0] == "identical"),
        "student_wins": sum(1 for s in scores if s > 0.5), "ties": sum(1 for s in scores if s == 0.5),
        "base_wins": sum(1 for s in scores if s < 0.5),
    }
