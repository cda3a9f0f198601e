"""Percentile bootstrap intervals for `sprout eval`'s numbers: one resampling scheme, used by the
judge's win rate and by the verifiable eval's student-minus-base differences.

The unit resampled is the eval prompt (item), never the single verdict or constraint: prompts are
what was drawn from a population, and a prompt's constraints or two verdicts are not independent.
"""

from __future__ import annotations

import random


def _percentiles(stats: list[float], level: float) -> tuple[float, float]:
    stats = sorted(stats)
    n = len(stats)
    lo = stats[int((1 - level) / 2 * n)]
    hi = stats[min(n - 1, int((1 + level) / 2 * n))]
    return (round(lo, 4), round(hi, 4))


def bootstrap_ci(scores: list[float], n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean score over items."""
    if not scores:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    k = len(scores)
    return _percentiles([sum(rng.choices(scores, k=k)) / k for _ in range(n)], level)


def paired_bootstrap(base: list[float], student: list[float], weights: list[float] | None = None,
                     n: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Student minus base on the same prompts: {"mean": difference, "ci95": [lo, hi]}.

    `base[i]` and `student[i]` are what each model scored on prompt i -- a 0/1 pass, or a count of
    passed constraints -- and `weights[i]` what that is out of (default 1). The statistic is the
    pooled rate sum(student)/sum(weights) minus sum(base)/sum(weights), so with weights = the
    prompts' constraint counts it is the constraint-level accuracy difference.

    Paired: each resample draws prompts with replacement and keeps both models' scores on a drawn
    prompt together, so how hard the prompts happen to be cancels out of the difference. Equal
    lengths and a fixed seed make every metric of one eval draw the same resamples.
    """
    weights = [1.0] * len(base) if weights is None else weights
    if not (len(base) == len(student) == len(weights)):
        raise ValueError(f"paired_bootstrap: {len(base)} base, {len(student)} student and {len(weights)} "
                         "weight values; each prompt needs all three")
    if not base:
        return {"mean": None, "ci95": [None, None]}
    if any(w <= 0 for w in weights):
        raise ValueError("paired_bootstrap: every weight must be positive")
    diffs = [s - b for s, b in zip(student, base)]
    k = len(diffs)
    rng = random.Random(seed)
    stats = []
    for _ in range(n):
        idx = rng.choices(range(k), k=k)
        stats.append(sum(diffs[i] for i in idx) / sum(weights[i] for i in idx))
    return {"mean": round(sum(diffs) / sum(weights), 4), "ci95": list(_percentiles(stats, level))}
