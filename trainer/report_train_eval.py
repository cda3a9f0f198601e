"""The training and evaluation sections of `sprout report`: the loss curves of a `sprout train`
folder, and a `sprout eval` folder's results -- verifiable instruction following first, the
pairwise judge second (its win rate shown as a result only when its verdicts carry information),
then the reference-answer scores and the first few items.

Apart from trainer.report, which covers the generation run, because these read other folders
(--train, --eval) and are left out when those are not given.
"""

from __future__ import annotations

from pathlib import Path

from generator.errors import UserError
from trainer.report_html import Doc, clip, e, fmt, pct, read_json, read_jsonl, table


TRAIN_KEYS = ("steps", "epochs", "final_loss", "eval_loss", "train_seconds", "tokens_per_s",
              "supervised_tokens_per_s", "peak_memory_mb", "examples", "processes", "device", "dtype", "model")


def train_section(doc: Doc, train_dir: Path) -> None:
    from trainer import report_charts as charts

    if not train_dir.is_dir():
        raise UserError(f"{train_dir}: --train folder not found")
    metrics = read_jsonl(train_dir / "metrics.jsonl")
    summary = read_json(train_dir / "summary.json")
    if not metrics and summary is None:
        raise UserError(f"{train_dir}: no metrics.jsonl or summary.json; pass a folder made by sprout train")
    # A resumed run logs some steps twice: the later line is the one the final weights came from.
    train = {int(m["step"]): float(m["loss"]) for m in metrics if isinstance(m.get("loss"), (int, float)) and "step" in m}
    evals = {int(m["step"]): float(m["eval_loss"]) for m in metrics
             if isinstance(m.get("eval_loss"), (int, float)) and "step" in m}
    body = ""
    if train or evals:
        body += doc.img(charts.loss_chart(sorted(train.items()), sorted(evals.items())), "training loss")
    if summary:
        body += table([(k.replace("_", " "), summary[k]) for k in TRAIN_KEYS if k in summary], cls="kv")
    cfg = train_dir / "train_config.yaml"
    if cfg.is_file():
        body += f"<details><summary>train_config.yaml</summary><pre>{e(cfg.read_text(encoding='utf-8'))}</pre></details>"
    doc.add("training", "Training", body)


def _judge_html(doc: Doc, summary: dict, headline: bool) -> str:
    """The pairwise judge: its win rate only when its verdicts carry information, and always how
    consistent they were across the two answer orders."""
    from trainer import report_charts as charts

    wr = summary.get("win_rate")
    if not isinstance(wr, (int, float)):
        return "<p>No judge verdicts in this evaluation.</p>"
    lo, hi = (summary.get("win_rate_ci95") or [None, None])[:2]
    ci = f" (95% CI {pct(lo)}–{pct(hi)})" if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else ""
    judged = (f"{e(fmt(summary.get('judged_items')))} items judged in both orders, "
              f"{e(fmt(summary.get('skipped_items', 0)))} skipped; a tie counts half. "
              f"Judge: {e(summary.get('judge', '?'))}.")
    if summary.get("judge_informative") is False:
        body = (f'<p class="warn"><strong>The judge is not informative:</strong> '
                f"{e(summary.get('judge_uninformative_reason') or 'no reason recorded')}. Its win rate measures "
                "nothing and is not a result.</p>"
                f'<p class="muted">Uninformative raw number, for the record only: win rate {pct(wr)}{e(ci)}; '
                f"{judged}</p>")
    else:
        cls = ' class="headline"' if headline else ""
        body = f"<p{cls}>Student win rate vs base: <strong>{pct(wr)}</strong>{e(ci)}</p><p>{judged}</p>"
        counts = [summary.get(k) for k in ("student_wins", "ties", "base_wins")]
        if all(isinstance(c, int) for c in counts) and sum(counts):
            body += doc.img(charts.verdict_chart(*counts), "judge verdicts")
    c = summary.get("judge_consistency")
    if isinstance(c, dict) and c.get("verdicts"):
        share = c.get("verdict_share") or {}
        rate = lambda x: pct(x) if isinstance(x, (int, float)) else "n/a"  # noqa: E731
        body += table([("pairs with a verdict in both orders", c.get("pairs")),
                       ("same letter in both orders (verdict followed the position)",
                        rate(c.get("position_driven_rate"))),
                       ("same answer won in both orders (consistent)", rate(c.get("consistent_rate"))),
                       ("verdicts A / B / tie", " / ".join(rate(share.get(k)) for k in ("A", "B", "tie")))],
                      cls="kv")
    return body


def _verifiable_html(doc: Doc, v: dict) -> str:
    from trainer import report_charts as charts
    from trainer.eval_render import verifiable_table
    from trainer.verifiable_eval import VERIFIABLE_LABELS

    models = [m for m in ("base", "student") if isinstance(v.get(m), dict)]
    rate = {m: v[m].get("prompt_strict") for m in models}
    if "diff" in v and len(models) == 2:
        d = v["diff"]["prompt_strict"]
        lo, hi = d["ci95"]
        body = (f'<p class="headline">Prompts meeting every constraint: student <strong>{pct(rate["student"])}'
                f'</strong>, base <strong>{pct(rate["base"])}</strong> '
                f"({100 * d['mean']:+.1f} points, 95% CI {100 * lo:+.1f} to {100 * hi:+.1f})</p>")
    else:
        body = ('<p class="headline">Prompts meeting every constraint: '
                + ", ".join(f"{m} <strong>{pct(rate[m])}</strong>" for m in models) + "</p>")
    body += (f"<p>{e(fmt(v.get('items')))} prompts with {e(fmt(v.get('constraints')))} constraints (no commas, "
             "at most N words, ...) that a program checks, so no judge is involved; greedy answers. "
             "Prompt-level: every constraint of the prompt met; constraint-level: share of all constraints met. "
             "Loose also accepts an answer without markdown emphasis or without its first or last line. The "
             "interval of the difference is a paired bootstrap over prompts.</p>")
    header, rows = verifiable_table(v)
    body += table([tuple(r) for r in rows], tuple(header))
    body += doc.img(charts.verifiable_chart({m: v[m] for m in models}, VERIFIABLE_LABELS), "verifiable pass rates")
    by_type = v.get("by_type_strict") or {}
    if by_type:
        body += "<h3>Strict pass rate by constraint type</h3>" + table(
            [(t, d.get("constraints"), *(pct(d[m]) if isinstance(d.get(m), (int, float)) else "n/a" for m in models))
             for t, d in by_type.items()], ("type", "constraints", *models))
    return body


def eval_section(doc: Doc, eval_dir: Path, n: int) -> None:
    summary = read_json(eval_dir / "summary.json")
    if summary is None:
        raise UserError(f"{eval_dir}: no summary.json; pass a folder made by sprout eval")
    results = read_jsonl(eval_dir / "results.jsonl")
    v = summary.get("verifiable")
    if isinstance(v, dict) and v.get("items"):
        body = "<h3>Instruction following (verifiable constraints)</h3>" + _verifiable_html(doc, v)
        body += "<h3>Pairwise judge (secondary)</h3>" + _judge_html(doc, summary, headline=False)
    else:  # a folder from before the verifiable eval, or one run with --verifiable-set none
        body = ("<p>No verifiable instruction-following eval in this folder.</p>"
                + _judge_html(doc, summary, headline=True))
    metric_rows = [(name, summary.get(f"base_{key}"), summary.get(f"student_{key}"))
                   for name, key in (("loss on reference answers", "reference_loss"), ("ROUGE-L to reference", "rouge_l"))
                   if f"base_{key}" in summary or f"student_{key}" in summary]
    if metric_rows:
        body += "<h3>Reference answers</h3>" + table(metric_rows, ("metric", "base", "student"))
    if summary.get("overlap_warning"):
        body += f'<p class="warn">{e(summary["overlap_warning"])}</p>'
    items = []
    for r in results[:n]:
        answers = r.get("answers") or {}
        score = (r.get("judge") or {}).get("score")
        rows = "".join(f"<dt>{e(k)}</dt><dd><pre>{e(clip(str(v), 800))}</pre></dd>" for k, v in
                       (("reference", r.get("reference", "")), *answers.items()) if v)
        items.append(f'<div class="card"><div class="muted">judge score for the student: {e(fmt(score))}</div>'
                     f"<dl><dt>instruction</dt><dd>{e(r.get('instruction', ''))}</dd>{rows}</dl></div>")
    if items:
        body += f"<h3>First {len(items)} of {len(results)} items</h3>" + "".join(items)
    doc.add("evaluation", "Evaluation", body)
