"""`sprout eval`'s results in words: the lines it prints and OUT/report.md. The verifiable
result leads, the pairwise judge follows (flagged when its verdicts follow the answer position),
then the reference-answer scores.

Apart from trainer.evaluate, which runs the eval, because rendering only reads the summary dict:
trainer.report_train_eval reuses the verifiable table for the HTML report, and the wording can be
tested without a server or a model.
"""

from __future__ import annotations

from trainer.verifiable_eval import VERIFIABLE_KEYS, VERIFIABLE_LABELS


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _pts(diff: dict) -> tuple[str, str]:
    """A difference of rates in percentage points, and its interval."""
    if diff.get("mean") is None:
        return "n/a", ""
    lo, hi = diff["ci95"]
    return f"{100 * diff['mean']:+.1f} pts", f"{100 * lo:+.1f} to {100 * hi:+.1f}"


def verifiable_table(v: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the verifiable result: one row per measure, base / student / difference."""
    models = [m for m in ("base", "student") if m in v]
    header = ["measure", *models] + (["student - base", "95% CI (paired bootstrap)"] if "diff" in v else [])
    rows = []
    for key in VERIFIABLE_KEYS:
        row = [VERIFIABLE_LABELS[key], *(_pct(v[m][key]) for m in models)]
        if "diff" in v:
            row += list(_pts(v["diff"][key]))
        rows.append(row)
    return header, rows


def judge_lines(s: dict) -> list[str]:
    """The pairwise judge in words: its win rate only when its verdicts carry information."""
    if s.get("win_rate") is None:
        return []
    c = s.get("judge_consistency") or {}
    share = c.get("verdict_share") or {}
    detail = []
    if c.get("pairs"):
        detail.append(f"verdict followed the position on {_pct(c['position_driven_rate'])} of {c['pairs']} pair(s) "
                      f"judged in both orders, the same answer won both orders on {_pct(c['consistent_rate'])}")
    if c.get("verdicts"):
        detail.append("verdicts " + " / ".join(f"{k} {_pct(share.get(k))}" for k in ("A", "B", "tie")))
    raw = (f"win rate {s['win_rate']:.3f} (95% CI {s['win_rate_ci95'][0]:.3f}-{s['win_rate_ci95'][1]:.3f}, "
           f"{s['judged_items']} items)")
    if s.get("judge_informative") is False:
        lines = [f"pairwise judge: NOT INFORMATIVE -- {s['judge_uninformative_reason']}; "
                 "its win rate measures nothing and is not a result",
                 f"  uninformative raw number, for the record: {raw}"]
    else:
        lines = [f"pairwise judge: student {raw}"]
    return lines + ([f"  judge consistency: {'; '.join(detail)}"] if detail else [])


def summary_lines(s: dict) -> list[str]:
    """What `sprout eval` prints, headline first: verifiable instruction following, then the
    pairwise judge (secondary, flagged when uninformative), then the reference-answer scores."""
    v = s.get("verifiable")
    if v:
        header, rows = verifiable_table(v)
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines = [f"instruction following on {v['items']} verifiable prompts ({v['constraints']} constraints, "
                 "checked by program; strict and loose as in IFEval):"]
        lines += ["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    else:
        lines = ["instruction following: not measured (no verifiable set)"]
    lines += judge_lines(s)
    for key in ("base_reference_loss", "student_reference_loss", "base_rouge_l", "student_rouge_l"):
        if key in s:
            lines.append(f"{key}: {s[key]}")
    return lines


def report_md(summary: dict, results: list[dict], vrows: list[dict] | None = None, examples: int = 5) -> str:
    lines = ["# Sprout evaluation", "", f"- reference eval items: {summary['items']}",
             f"- base model: `{summary['model']}`", f"- adapter: `{summary['adapter']}`", "", "## Instruction following (verifiable constraints)", ""]
    v = summary.get("verifiable")
    if v:
        header, rows = verifiable_table(v)
        lines += [f"{v['items']} prompts from `{v.get('set')}` with {v['constraints']} constraints that a program "
                  "checks (generator.verifiers); greedy answers. Prompt-level: every constraint met; "
                  "constraint-level: share of all constraints met. Loose also accepts the answer without "
                  "markdown emphasis or its first / last line. The interval resamples prompts, both models "
                  "together.", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        by_type = v.get("by_type_strict") or {}
        if by_type:
            models = [m for m in ("base", "student") if m in v]
            lines += ["", "Strict pass rate by constraint type:", "",
                      "| type | constraints | " + " | ".join(models) + " |", "|" + "---|" * (2 + len(models))]
            lines += [f"| {t} | {d['constraints']} | " + " | ".join(_pct(d[m]) for m in models) + " |"
                      for t, d in by_type.items()]
    else:
        lines.append("Not measured: no verifiable set was given (or the shipped one is missing).")
    lines += ["", "## Pairwise judge (secondary)", ""]
    judge = judge_lines(summary)
    if judge:
        if summary.get("judge_informative") is False:
            judge[0] = f"**{judge[0]}**"
        lines += [f"- {line.strip()}" for line in judge]
        lines.append(f"- {summary['skipped_items']} items skipped (no readable verdict); judge: {summary['judge']}")
    else:
        lines.append("Not run.")
    lines += ["", "## Reference answers", ""]
    for key in ("base_reference_loss", "student_reference_loss", "base_rouge_l", "student_rouge_l"):
        if key in summary:
            lines.append(f"- {key.replace('_', ' ')}: {summary[key]}")
    if summary.get("overlap_warning"):
        lines.append(f"- {summary['overlap_warning']}")
    lines += ["", "## Examples", ""] if results else [""]
    for r in results[:examples]:
        lines += [f"### {r['instruction'][:120]}", ""]
        if r["input"]:
            lines += [f"Input: {r['input'][:300]}", ""]
        lines += [f"- reference: {r['reference'][:300]}"]
        for name, ans in r["answers"].items():
            lines.append(f"- {name}: {ans[:300]}")
        if "judge" in r:
            lines.append(f"- judge verdicts (student as B, then as A): {r['judge']['verdicts']}")
        lines.append("")
    if vrows:
        lines += ["## Verifiable examples", ""]
        for r in vrows[:examples]:
            lines += [f"### {r['instruction'][:200]}", ""]
            for name, ans in r["answers"].items():
                marks = ", ".join(f"{c['type']} {'met' if ok else 'MISSED'}"
                                  for c, ok in zip(r["constraints"], r["strict"][name]))
                lines.append(f"- {name} ({marks}): {ans[:300]}")
            lines.append("")
    return "\n".join(lines)
