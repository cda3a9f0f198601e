"""`sprout report`: one static HTML file about a generation run, and optionally the training and
evaluation that used it.

    sprout report RUN [--train DIR] [--eval DIR] [--out report.html]

The file stands alone: charts are PNGs inlined as data URIs, styles are inline, there is no
script, so it can be mailed, attached to an issue or opened offline. Sections: counts and
rejection reasons, length histograms, Self-Instruct's verb–noun diversity chart, nearest-neighbour
ROUGE-L, sample records, training loss, evaluation (verifiable instruction following first; the
pairwise judge second, flagged when its verdicts follow the answer position). A section whose
input is missing is left out. Every piece of record text is teacher output -- untrusted -- and is HTML-escaped.

This module holds the generation-run sections and the page; the training and evaluation sections
are in trainer.report_train_eval, the shared HTML pieces in trainer.report_html, the charts in
trainer.report_charts.
"""

from __future__ import annotations

import dataclasses
import os
import random
import statistics
from collections import Counter
from pathlib import Path

from generator.config import setting
from generator.errors import UserError
from trainer.report_html import Doc, clip, e, fmt, pct, read_json, read_jsonl, table
from trainer.report_train_eval import eval_section, train_section

VERB_PARSERS = ("auto", "spacy", "heuristic")


@dataclasses.dataclass
class ReportConfig:
    run: str = setting("", "run folder made by sprout generate (holds data.jsonl)", positional=True)
    train: str | None = setting(None, "sprout train output: adds the loss curves", metavar="DIR")
    eval: str | None = setting(None, "sprout eval output: adds instruction following, the judge, examples",
                               metavar="DIR")
    out: str | None = setting(None, "report file to write", metavar="FILE.html", shown="RUN/report.html")
    samples: int = setting(8, "sample records and eval items to show", metavar="N")
    verb_parser: str = setting("auto", "verb–noun extraction: spacy (needs the 'report' extra), heuristic, or auto: "
                               "spaCy when installed, else the heuristic", choices=VERB_PARSERS)


# --- reading inputs ---------------------------------------------------------------------------


def _config_threshold(run_dir: Path) -> float | None:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return None  # the report only uses it to draw a reference line
    value = (cfg.get("config") or {}).get("novelty_threshold") if isinstance(cfg, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _unique_instructions(records: list[dict]) -> list[dict]:
    """First record of each instruction: Self-Instruct runs hold several instances of one."""
    seen, out = set(), []
    for r in records:
        key = r.get("instruction_id") or r["instruction"]
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def nearest_neighbours(texts: list[str]) -> list[tuple[float, str] | None]:
    """Each text's most similar *other* text and its ROUGE-L F (None for a lone text). One pass
    scores each against the texts before it, a reversed pass against those after it; the better
    of the two is the nearest neighbour overall."""
    from generator.novelty import NoveltyPool

    best: list[tuple[float, str] | None] = [None] * len(texts)
    for order in (range(len(texts)), reversed(range(len(texts)))):
        pool = NoveltyPool(threshold=1.0)  # a threshold of 1 keeps everything: only scores matter
        for i in order:
            _, similar = pool.check_and_add(texts[i], k=1)
            if similar and (best[i] is None or similar[0][1] > best[i][0]):
                best[i] = (similar[0][1], similar[0][0])
    return best


# --- sections ---------------------------------------------------------------------------------


STAT_KEYS = ("mode", "target", "kept_instructions", "records", "requests", "retries", "parse_failures",
             "prompt_tokens", "completion_tokens", "elapsed_s", "session_completion_tokens_per_s")


def _counts_section(doc: Doc, records, unique, stats, rejected) -> None:
    from trainer import report_charts as charts

    rows = [(k.replace("_", " "), stats[k]) for k in STAT_KEYS if k in (stats or {})]
    if not stats:
        rows = [("kept instructions", len(unique)), ("records", len(records))]
    rows += [("records with input", sum(1 for r in records if r.get("input"))),
             ("classification records", sum(1 for r in records if r.get("is_classification")))]
    turns = Counter(r["num_turns"] for r in records if isinstance(r.get("num_turns"), int))
    if turns:  # a multi-turn run (--turns): how far its conversations got
        rows.append(("records by assistant turns", ", ".join(f"{k}: {n}" for k, n in sorted(turns.items()))))
    for key in ("persona", "system_prompt"):  # a steered magpie run: how the records split
        split = Counter(r[key] for r in records if r.get(key))
        if split:
            rows.append((f"records by {key.replace('_', ' ')}", "; ".join(
                f"{clip(k, 60)}: {n}" for k, n in split.most_common(10)) + (" …" if len(split) > 10 else "")))
    teacher = records[0].get("teacher") if records else None
    if isinstance(teacher, dict) and teacher.get("model"):
        rows.append(("teacher", teacher["model"]))
    # stats.json has the authoritative tally (rejected.jsonl may be cut short by a crash).
    reasons = (stats or {}).get("rejections") or Counter(r.get("reason", "unknown") for r in rejected)
    examples: dict[str, str] = {}
    for r in rejected:
        text = r.get("instruction") or r.get("raw")
        if isinstance(text, str) and text.strip():
            examples.setdefault(r.get("reason", "unknown"), text)
    body = table(rows, cls="kv")
    if reasons:
        total = sum(reasons.values())
        body += (f"<h3>Rejections</h3><p>{fmt(sum(reasons.values()))} candidates rejected, "
                 f"{fmt(len(unique))} instructions kept.</p>")
        body += doc.img(charts.bar_chart(dict(reasons), "Rejected candidates by reason"), "rejection reasons")
        rows = [(k, n, pct(n / total), (examples.get(k) or "")[:200])
                for k, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))]
        body += table(rows, ("reason", "count", "share of rejections", "example"))
    else:
        body += "<p>No rejections recorded.</p>"
    doc.add("counts", "Counts and rejection reasons", body)


def _lengths_section(doc: Doc, records, unique) -> None:
    from trainer import report_charts as charts

    series = [("instruction", [len(r["instruction"].split()) for r in unique]),
              ("input (non-empty)", [len(r["input"].split()) for r in records if r.get("input")]),
              ("output", [len(r["output"].split()) for r in records])]
    series = [(t, v) for t, v in series if v]
    if not series:
        return
    body = doc.img(charts.length_histograms(series), "length histograms")
    body += table([(t, len(v), statistics.mean(v), statistics.median(v), max(v)) for t, v in series],
                  ("words in", "n", "mean", "median", "max"))
    doc.add("lengths", "Instruction and output lengths", body)


def _verb_noun_section(doc: Doc, unique, verb_parser: str) -> None:
    from trainer import report_charts as charts

    pairs, method = charts.verb_noun_pairs([r["instruction"] for r in unique], verb_parser)
    full = sum(1 for v, n in pairs if v and n)
    verbs = len({v for v, n in pairs if v and n})
    body = (f'<p class="method">Method: {e(method)}.</p><p>{full} of {len(pairs)} instructions '
            f"({pct(full / len(pairs)) if pairs else '0%'}) have a root verb with a direct noun object, "
            f"with {verbs} distinct verbs; the others are questions or more complex sentences, as in the "
            "Self-Instruct paper, and are not drawn.</p>")
    top = charts.top_verb_nouns(pairs)
    if top:
        body += doc.img(charts.verb_noun_sunburst(top), "verb-noun diversity chart")
        counts = Counter(v for v, n in pairs if v and n)
        body += table([(v, counts[v], ", ".join(f"{n} ({c})" for n, c in nouns)) for v, nouns in top],
                      ("verb", "instructions", "top objects"))
    doc.add("verbs", "Verb–noun diversity", body)


def _novelty_section(doc: Doc, unique, threshold: float | None) -> None:
    from trainer import report_charts as charts

    scores: list[float | None] = []
    neighbours: list[str | None] = []
    for r in unique:
        sim = r.get("most_similar")
        top = sim[0] if isinstance(sim, list) and sim and isinstance(sim[0], dict) else None
        scores.append(float(top["rouge_l"]) if top and isinstance(top.get("rouge_l"), (int, float)) else None)
        neighbours.append(top.get("instruction") if top else None)
    missing = [i for i, s in enumerate(scores) if s is None]
    note = "ROUGE-L F to the most similar instruction in the pool (seeds and kept instructions) when each was accepted"
    if missing:
        computed = nearest_neighbours([r["instruction"] for r in unique])
        for i in missing:
            if computed[i]:
                scores[i], neighbours[i] = computed[i]
        note += (f"; {len(missing)} records carried no neighbour, so theirs is computed here against the "
                 "run's other instructions")
    pairs = [(s, i) for i, s in enumerate(scores) if s is not None]
    if not pairs:
        return
    values = [s for s, _ in pairs]
    body = f"<p>{e(note)}.</p>" + doc.img(charts.nearest_rouge_histogram(values, threshold), "nearest-neighbour ROUGE-L")
    closest = sorted(pairs, key=lambda p: -p[0])[:5]
    body += "<h3>Closest pairs</h3>" + table(
        [(f"{s:.3f}", unique[i]["instruction"][:200], (neighbours[i] or "")[:200])
         for s, i in closest], ("ROUGE-L", "instruction", "most similar"))
    body += _steer_table(unique)
    doc.add("novelty", "Nearest-neighbour ROUGE-L", body)


def _steer_table(unique) -> str:
    """Diversity split by what steered the requests (--personas / --system-prompts), when several
    did: per persona, how many instructions, how long, how many distinct opening words, and how
    close each is to its nearest neighbour among that persona's own (lower: more varied)."""
    for key in ("persona", "system_prompt"):
        groups: dict[str, list[str]] = {}
        for r in unique:
            if r.get(key):
                groups.setdefault(r[key], []).append(r["instruction"])
        if len(groups) < 2:
            continue
        rows = []
        for name, texts in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            near = [n[0] for n in nearest_neighbours(texts) if n]
            firsts = {t.split()[0].lower() for t in texts if t.split()}
            rows.append((clip(name, 80), len(texts), f"{statistics.mean(len(t.split()) for t in texts):.1f}",
                         pct(len(firsts) / len(texts)), f"{statistics.mean(near):.3f}" if near else "-"))
        label = key.replace("_", " ")
        return f"<h3>By {e(label)}</h3>" + table(rows, (label, "instructions", "mean words", "distinct first words",
                                                        f"mean nearest ROUGE-L within the {label}"))
    return ""


def _samples_section(doc: Doc, records, n: int) -> None:
    if n <= 0 or not records:
        return
    # A fixed seed: the same run gives the same report, and reruns can be diffed.
    picks = sorted(random.Random(0).sample(range(len(records)), min(n, len(records))))
    cards = []
    for i in picks:
        r = records[i]
        tags = [f"record {i + 1} of {len(records)}", r.get("id") or ""]
        if r.get("is_classification"):
            tags.append("classification")
        sim = r.get("most_similar")
        nn = (f'<dt>most similar</dt><dd>{e(sim[0].get("instruction", ""))} '
              f'<span class="muted">(ROUGE-L {e(sim[0].get("rouge_l", "?"))})</span></dd>'
              if isinstance(sim, list) and sim and isinstance(sim[0], dict) else "")
        inp = f"<dt>input</dt><dd><pre>{e(clip(r['input']))}</pre></dd>" if r.get("input") else ""
        later = ""
        for k, t in enumerate(r.get("turns") or [], 2):  # a conversation's follow-up turns
            if isinstance(t, dict) and isinstance(r.get("messages"), list) and len(r["messages"]) >= 2 * k:
                later += (f"<dt>turn {k}: user ({e(t.get('move', ''))})</dt><dd>{e(r['messages'][2 * k - 2]['content'])}"
                          f"</dd><dt>turn {k}: assistant</dt><dd><pre>{e(clip(r['messages'][2 * k - 1]['content']))}"
                          "</pre></dd>")
        cards.append(f'<div class="card"><div class="muted">{e(" · ".join(t for t in tags if t))}</div><dl>'
                     f"<dt>instruction</dt><dd>{e(r['instruction'])}</dd>{inp}"
                     f"<dt>output</dt><dd><pre>{e(clip(r['output']))}</pre></dd>{later}{nn}</dl></div>")
    doc.add("samples", "Sample records", f"<p>{len(picks)} records drawn at random (seed 0).</p>" + "".join(cards))


# --- the page ---------------------------------------------------------------------------------

CSS = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1000px;padding:1.5em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em}img{max-width:100%;display:block;margin:1em 0}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}table.kv td:first-child{color:#555}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0;background:#fafafa}
dt{font-weight:600;margin-top:.4em}dd{margin-left:1em}pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:13px}
.muted{color:#777;font-size:13px}.headline{font-size:1.4em}.method{font-style:italic}.warn{color:#a00}
"""


def build_html(cfg: ReportConfig) -> tuple[str, int]:
    """The report page and how many images it holds."""
    from generator.export import load_run_records

    run_path = Path(cfg.run)
    records = load_run_records(run_path)  # UserError naming the path when there is no data.jsonl
    run_dir = run_path if run_path.is_dir() else run_path.parent
    stats = read_json(run_dir / "stats.json")
    rejected = read_jsonl(run_dir / "rejected.jsonl")
    unique = _unique_instructions(records)

    doc = Doc()
    _counts_section(doc, records, unique, stats, rejected)
    if records:
        _lengths_section(doc, records, unique)
        _verb_noun_section(doc, unique, cfg.verb_parser)
        _novelty_section(doc, unique, _config_threshold(run_dir))
        _samples_section(doc, records, cfg.samples)
    if cfg.train:
        train_section(doc, Path(cfg.train))
    if cfg.eval:
        eval_section(doc, Path(cfg.eval), cfg.samples)

    run_id = (stats or {}).get("run_id") or (records[0].get("run_id") if records else None)
    title = f"Sprout report: {run_dir.name}" + (f" (run {run_id})" if run_id else "")
    created = sorted(r["created_at"] for r in records if isinstance(r.get("created_at"), str))
    sub = [f"run folder {run_dir.resolve()}"]
    if created:
        sub.append(f"records created {created[0]} to {created[-1]}")
    nav = "".join(f'<a href="#{a}">{e(h)}</a>' for a, h, _ in doc.sections)
    parts = [f'<section id="{a}"><h2>{e(h)}</h2>{b}</section>' for a, h, b in doc.sections]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{e(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{e(title)}</h1><p class=\"muted\">{e('; '.join(sub))}</p>"
            f"<nav>{nav}</nav>{''.join(parts)}</body></html>\n")
    return page, doc.images


def write_report(run: str, train: str | None = None, eval: str | None = None, out: str | None = None,
                 samples: int = 8, verb_parser: str = "auto") -> Path:
    """Write the report and return its path (default RUN/report.html)."""
    cfg = ReportConfig(run=run, train=train, eval=eval, out=out, samples=samples, verb_parser=verb_parser)
    return _write(cfg)[0]


def _write(cfg: ReportConfig) -> tuple[Path, int]:
    if not cfg.run:
        raise UserError("no run folder given: sprout report RUN --out report.html")
    if cfg.samples < 0:
        raise UserError(f"--samples must be 0 or more, got {cfg.samples}")
    if cfg.verb_parser not in VERB_PARSERS:
        raise UserError(f"--verb-parser must be one of {', '.join(VERB_PARSERS)}, got {cfg.verb_parser!r}")
    page, images = build_html(cfg)
    run_path = Path(cfg.run)
    out = Path(cfg.out) if cfg.out else (run_path if run_path.is_dir() else run_path.parent) / "report.html"
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name such as {out / 'report.html'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)  # never leave a half-written report where the old one was
    except OSError as err:
        raise UserError(f"--out {out}: cannot write ({err.strerror})") from None
    return out, images


def add_report_args(p) -> None:
    from generator.config import add_flags

    add_flags(p, ReportConfig)
    p.set_defaults(func=run_report)


def run_report(args) -> int:
    from generator.config import load_config

    cfg = load_config(ReportConfig, getattr(args, "config", None), vars(args))
    out, images = _write(cfg)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB, {images} charts)")
    return 0
