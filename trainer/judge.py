"""Pairwise LLM-judge preference, both orders, with a bootstrap interval -- and a check that the
judge's verdicts say anything at all.

Each item is judged twice: (base, student) shown as (A, B) and then swapped, which cancels the
judge's position bias. Identical answers are a tie without asking the judge. A verdict scores the
student 1 (win), 0.5 (tie) or 0 (loss); an item's
score is the mean of its readable verdicts. An item with no readable verdict is skipped and
counted -- never scored as a loss -- and a judge that gives no verdict at all is an error.

Cancelling position bias has a blind spot: a judge that answers "A" whatever it is shown scores
every item 0.5, and its win rate 0.5 with the interval [0.5, 0.5] reads like a confident "no
difference". `position_consistency` measures how often the verdict followed the position rather
than the answer, and `summarize` marks such a judge `judge_informative: false`, with the reason.
"""

from __future__ import annotations

import asyncio
import statistics

from generator.client import TeacherClient
from generator.errors import UserError
from generator.parsing import PARSERS, response_format
from generator.resources import data_dir
from generator.templates import Template, check_parser, make_env
from trainer.stats import bootstrap_ci

# A judge giving one verdict this often, or the same letter in both orders on this share of the
# pairs, reports its own habit rather than a comparison of the answers.
UNINFORMATIVE_SHARE = 0.9


def judge_template(path: str | None = None) -> Template:
    from pathlib import Path

    p = Path(path) if path else data_dir("prompts") / "judge.jinja"
    if not p.is_file():
        raise UserError(f"--judge-template {p}: file not found")
    return check_parser(Template(p, make_env(p.parent)), "judge")


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


def position_consistency(judged: list[dict]) -> dict:
    """How the two-order verdicts relate. verdicts[0] has the student as B, verdicts[1] as A.

    Over pairs with both verdicts readable (identical answers were never judged):
    - consistent: the same answer won in both orders (B then A: the student; A then B: the base);
    - position_driven: the same letter in both orders (A, A or B, B) -- the verdict followed the
      position, so each answer won once;
    - mixed: one or both verdicts a tie.
    verdict_share: each of A, B and tie among all readable verdicts (half-read pairs included).
    """
    pairs = [j["verdicts"] for j in judged if j["verdicts"][0] != "identical"]
    both = [(a, b) for a, b in pairs if a is not None and b is not None]
    consistent = sum(1 for a, b in both if (a, b) in (("B", "A"), ("A", "B")))
    position = sum(1 for a, b in both if a == b and a in ("A", "B"))
    readable = [v for p in pairs for v in p if v is not None]
    return {
        "pairs": len(both), "consistent": consistent, "position_driven": position,
        "mixed": len(both) - consistent - position,
        "consistent_rate": round(consistent / len(both), 4) if both else None,
        "position_driven_rate": round(position / len(both), 4) if both else None,
        "verdicts": len(readable),
        "verdict_share": {v: round(readable.count(v) / len(readable), 4) if readable else None
                          for v in ("A", "B", "tie")},
    }


def informative(consistency: dict) -> tuple[bool, str | None]:
    """(whether the judge's verdicts say anything about the answers, and if not, why)."""
    if not consistency["verdicts"]:
        return False, "the judge was asked about no pair: every answer pair was identical or unreadable"
    share = consistency["verdict_share"]
    letter = max(share, key=lambda v: share[v])
    if share[letter] >= UNINFORMATIVE_SHARE:
        return False, (f'the judge answered "{letter}" in {share[letter]:.0%} of its {consistency["verdicts"]} '
                       "verdicts, whatever the answers were")
    rate = consistency["position_driven_rate"]
    if rate is not None and rate >= UNINFORMATIVE_SHARE:
        return False, (f"on {rate:.0%} of the {consistency['pairs']} pairs judged in both orders the judge "
                       "named the same position both times: its verdict followed the position, not the answer")
    return True, None


def summarize(judged: list[dict]) -> dict:
    scores = [j["score"] for j in judged if j["score"] is not None]
    verdicts = [v for j in judged for v in j["verdicts"]]
    if judged and not scores:
        raise UserError("the judge returned no readable verdict for any item; check --judge-model "
                        "(a chat model that follows instructions) or --judge-template")
    consistency = position_consistency(judged)
    ok, reason = informative(consistency)
    return {
        "win_rate": round(statistics.mean(scores), 4) if scores else None,
        "win_rate_ci95": list(bootstrap_ci(scores)),
        "judged_items": len(scores), "skipped_items": len(judged) - len(scores),
        "verdicts_missing": sum(v is None for v in verdicts),
        "identical_answers": sum(1 for j in judged if j["verdicts"][0] == "identical"),
        "student_wins": sum(1 for s in scores if s > 0.5), "ties": sum(1 for s in scores if s == 0.5),
        "base_wins": sum(1 for s in scores if s < 0.5),
        "judge_consistency": consistency,
        "judge_informative": ok,
        "judge_uninformative_reason": reason,
    }
