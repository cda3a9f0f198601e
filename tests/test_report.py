"""`sprout report`: the HTML holds every section, its charts are real PNGs that a browser decodes,
record text is escaped, missing inputs are one-line errors, and the verb–noun heuristic reads
instructions the way the Self-Instruct chart needs."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess

import pytest

from trainer.cli import main
from generator.errors import UserError
from generator.novelty import rouge_l
from trainer.report import nearest_neighbours
from trainer.report_charts import heuristic_verb_noun, top_verb_nouns, verb_noun_pairs

EVIL = "<script>alert(1)</script> Write a haiku about cats & dogs"

INSTRUCTIONS = [
    "Write a poem about the ocean at night.",
    "Write a short story about a brave dog.",
    "Write a cover letter for a junior developer job.",
    "Write a haiku about autumn leaves.",
    "Generate a list of five healthy breakfast ideas.",
    "Generate a catchy slogan for a coffee shop.",
    "Generate three questions about the solar system.",
    "Give me three examples of renewable energy sources.",
    "Give a brief summary of the French Revolution.",
    "Classify the sentiment of the following tweet.",
    "Classify the animals into mammals and birds.",
    "Translate the sentence into Spanish.",
    "Rewrite the following sentence in passive voice.",
    "Summarize the article below in two sentences.",
    "Create a workout plan for a beginner.",
    "Create a recipe for vegan pancakes.",
    "Explain how photosynthesis works.",
    "What is the capital of Australia?",
    "How do airplanes stay in the air?",
    "Please suggest a name for a pet turtle.",
    "Can you describe the water cycle?",
    "Given a list of numbers, sort them in ascending order.",
    "Identify the verb in the sentence.",
    "Find the largest number in the list.",
    "Make a shopping list for a picnic.",
    "Tell me a joke about programmers.",
    "Convert the temperature from Celsius to Fahrenheit.",
    "Design a logo for a bakery called $weet Treats.",
    EVIL,
]

HEADINGS = ["Counts and rejection reasons", "Instruction and output lengths", "Verb–noun diversity",
            "Nearest-neighbour ROUGE-L", "Sample records", "Training", "Evaluation"]
IMG = '<img src="data:image/png;base64,'


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def make_run(root):
    run = root / "run"
    run.mkdir()
    records = []
    for i, text in enumerate(INSTRUCTIONS):
        n = 2 if i % 7 == 0 else 1  # Self-Instruct runs hold several instances of one instruction
        # Two instructions lack most_similar: the report computes their neighbour itself.
        sim = [] if i in (3, 4) else [{"instruction": INSTRUCTIONS[i - 1], "rouge_l": round(0.1 + 0.02 * i, 4)}]
        for k in range(n):
            records.append({
                "id": f"ins{i}-{k}", "instruction": text, "input": "<b>bold</b> input" if i % 5 == 0 else "",
                "output": " ".join(["word"] * (5 + 3 * i + k)), "is_classification": text.startswith("Classify"),
                "instruction_id": f"ins{i}", "instance_index": k, "num_instances": n, "most_similar": sim,
                "created_at": f"2026-01-01T00:00:{i:02d}Z", "teacher": {"model": "tiny-teacher"}, "templates": {}})
    _jsonl(run / "data.jsonl", records)
    _jsonl(run / "rejected.jsonl", [
        {"instruction": "Write a poem about the ocean.", "reason": "not_novel",
         "most_similar": [{"instruction": INSTRUCTIONS[0], "rouge_l": 0.9}]},
        {"instruction": "Hi", "reason": "too_short"},
        {"instruction": "Draw a map of <Europe>", "reason": "blocklisted_word"},
        {"stage": "alpaca", "raw": "{not json", "reason": "parse_error"},
    ])
    (run / "stats.json").write_text(json.dumps({
        "run_id": "abc123", "mode": "self-instruct", "target": 30, "kept_instructions": len(INSTRUCTIONS),
        "records": len(records), "requests": 12, "completion_tokens": 4321, "elapsed_s": 12.5,
        "session_completion_tokens_per_s": 345.6,
        "rejections": {"not_novel": 7, "too_short": 5, "blocklisted_word": 2, "parse_error": 3}}))
    (run / "config.yaml").write_text("run_id: abc123\nconfig:\n  novelty_threshold: 0.7\n")
    return run, records


def make_train(root):
    train = root / "train"
    train.mkdir()
    rows = [{"step": s, "epoch": s / 5, "loss": 3.0 - 0.2 * s, "lr": 2e-4, "tokens_per_s": 100.0} for s in range(1, 11)]
    rows.insert(5, {"step": 5, "eval_loss": 2.4})
    rows.append({"step": 10, "loss": 1.05, "lr": 1e-5})  # a resumed run logs step 10 again
    rows.append({"step": 10, "eval_loss": 1.9})
    _jsonl(train / "metrics.jsonl", rows)
    (train / "summary.json").write_text(json.dumps({"steps": 10, "final_loss": 1.05, "eval_loss": 1.9,
                                                    "device": "cpu", "examples": {"train": 27, "eval": 3}}))
    (train / "train_config.yaml").write_text("lora_r: 8\nnote: <i>not markup</i>\n")
    return train


VERIFIABLE = {
    "items": 40, "constraints": 64, "set": "seeds/verifiable_eval.jsonl",
    "base": {"prompt_strict": 0.25, "constraint_strict": 0.4, "prompt_loose": 0.3, "constraint_loose": 0.45},
    "student": {"prompt_strict": 0.55, "constraint_strict": 0.7, "prompt_loose": 0.6, "constraint_loose": 0.75},
    "diff": {"prompt_strict": {"mean": 0.3, "ci95": [0.125, 0.475]},
             "constraint_strict": {"mean": 0.3, "ci95": [0.2, 0.4]},
             "prompt_loose": {"mean": 0.3, "ci95": [0.1, 0.5]},
             "constraint_loose": {"mean": 0.3, "ci95": [0.15, 0.45]}},
    "by_type_strict": {"no_commas": {"constraints": 30, "base": 0.2, "student": 0.6},
                       "max_words": {"constraints": 34, "base": 0.5, "student": 0.8}},
}
CONSISTENT_JUDGE = {"judge_informative": True, "judge_uninformative_reason": None, "judge_consistency": {
    "pairs": 4, "consistent": 3, "position_driven": 1, "mixed": 0, "consistent_rate": 0.75,
    "position_driven_rate": 0.25, "verdicts": 8, "verdict_share": {"A": 0.5, "B": 0.5, "tie": 0.0}}}
A_JUDGE = {"win_rate": 0.5, "win_rate_ci95": [0.5, 0.5], "student_wins": 0, "ties": 4, "base_wins": 0,
           "judge_informative": False,
           "judge_uninformative_reason": 'the judge answered "A" in 100% of its 8 verdicts, whatever the answers were',
           "judge_consistency": {"pairs": 4, "consistent": 0, "position_driven": 4, "mixed": 0, "consistent_rate": 0.0,
                                 "position_driven_rate": 1.0, "verdicts": 8,
                                 "verdict_share": {"A": 1.0, "B": 0.0, "tie": 0.0}}}


def make_eval(root, name="eval", **extra):
    ev = root / name
    ev.mkdir()
    (ev / "summary.json").write_text(json.dumps({
        "items": 4, "win_rate": 0.625, "win_rate_ci95": [0.375, 0.875], "judged_items": 4, "skipped_items": 0,
        "student_wins": 2, "ties": 1, "base_wins": 1, "base_reference_loss": 2.5, "student_reference_loss": 2.1,
        "base_rouge_l": 0.14, "student_rouge_l": 0.19, "judge": "tiny-judge", **extra}))
    _jsonl(ev / "results.jsonl", [
        {"instruction": f"Eval question {i} <img src=x onerror=alert(2)>", "input": "", "reference": f"ref {i}",
         "answers": {"base": f"base answer {i}", "student": f"student answer {i}"},
         "loss": {"base": 2.5, "student": 2.1}, "rouge_l": {"base": 0.1, "student": 0.2},
         "judge": {"verdicts": ["B", "A"], "score": [1.0, 0.5, 1.0, 0.0][i]}} for i in range(4)])
    return ev


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run, _ = make_run(root)
    out = root / "out" / "report.html"
    rc = main(["report", str(run), "--train", str(make_train(root)),
               "--eval", str(make_eval(root, verifiable=VERIFIABLE, **CONSISTENT_JUDGE)), "--out", str(out)])
    assert rc == 0
    return out


def _png_sizes(page: str) -> list[tuple[int, int]]:
    sizes = []
    for b64 in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page):
        png = base64.b64decode(b64, validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
        sizes.append(struct.unpack(">II", png[16:24]))
    return sizes


def test_report_has_every_section_chart_and_number(full_report):
    page = full_report.read_text(encoding="utf-8")
    for heading in HEADINGS:
        assert f">{heading}</h2>" in page
    # counts, lengths, verb–noun, nearest-neighbour, loss, verifiable pass rates, verdicts
    assert page.count(IMG) == 7
    sizes = _png_sizes(page)
    assert len(sizes) == 7 and all(w > 200 and h > 100 for w, h in sizes)
    # The eval's headline is the verifiable result; the judge comes after it, with its consistency.
    headline = ("Prompts meeting every constraint: student <strong>55.0%</strong>, base <strong>25.0%</strong> "
                "(+30.0 points, 95% CI +12.5 to +47.5)")
    assert headline in page
    assert "<td>constraint-level, loose</td><td>45.0%</td><td>75.0%</td><td>+30.0 pts</td><td>+15.0 to +45.0</td>" in page
    assert "<td>no_commas</td><td>30</td><td>20.0%</td><td>60.0%</td>" in page
    assert page.index(headline) < page.index(">Pairwise judge (secondary)</h3>") < page.index("<strong>62.5%</strong>")
    assert "<strong>62.5%</strong>" in page and "37.5%–87.5%" in page
    assert "<td>same answer won in both orders (consistent)</td><td>75.0%</td>" in page
    assert "Method:" in page
    # Tallies come from stats.json, not from the (shorter) rejected.jsonl.
    assert "<td>not_novel</td><td>7</td>" in page
    assert "<td>29</td>" in page  # kept instructions
    # Two records had no stored neighbour: the report says it computed theirs.
    assert "2 records carried no neighbour" in page


def test_report_escapes_untrusted_text(full_report):
    page = full_report.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Write a haiku about cats &amp; dogs" in page
    assert "<script" not in page  # the report carries no script at all, so any is injected
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<i>not markup</i>" not in page and "&lt;Europe&gt;" in page


def test_optional_sections_are_left_out(tmp_path, capsys):
    run, _ = make_run(tmp_path)
    assert main(["report", str(run), "--samples", "3", "--verb-parser", "heuristic"]) == 0
    page = (run / "report.html").read_text(encoding="utf-8")  # the default --out
    assert ">Training</h2>" not in page and ">Evaluation</h2>" not in page
    assert page.count(IMG) == 4
    assert page.count('<div class="card">') == 3
    assert "word-order heuristic" in page
    assert "report.html" in capsys.readouterr().out


def test_uninformative_judge_is_not_shown_as_a_result(tmp_path):
    run, _ = make_run(tmp_path)
    ev = make_eval(tmp_path, verifiable=VERIFIABLE, **A_JUDGE)
    assert main(["report", str(run), "--eval", str(ev), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<strong>The judge is not informative:</strong> the judge answered &quot;A&quot; in 100%" in page
    assert "Uninformative raw number, for the record only: win rate 50.0% (95% CI 50.0%–50.0%)" in page
    assert "Student win rate" not in page and "<strong>50.0%</strong>" not in page
    assert "<td>same letter in both orders (verdict followed the position)</td><td>100.0%</td>" in page
    assert page.count(IMG) == 5  # counts, lengths, verb–noun, nearest-neighbour, verifiable: no verdict chart


def test_eval_folder_without_verifiable_results_keeps_the_judge_headline(tmp_path):
    run, _ = make_run(tmp_path)
    ev = make_eval(tmp_path)  # an older sprout eval: no verifiable block, no consistency numbers
    assert main(["report", str(run), "--eval", str(ev), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "No verifiable instruction-following eval in this folder." in page
    assert '<p class="headline">Student win rate vs base: <strong>62.5%</strong> (95% CI 37.5%–87.5%)</p>' in page
    assert page.count(IMG) == 5  # counts, lengths, verb–noun, nearest-neighbour, verdicts


@pytest.mark.parametrize("args, where", [
    (lambda t: [str(t / "nope")], "nope"),
    (lambda t: [str(t / "empty")], "empty"),
    (lambda t: [str(t / "run"), "--train", str(t / "no-train")], "no-train"),
    (lambda t: [str(t / "run"), "--eval", str(t / "empty")], "empty"),
])
def test_missing_inputs_are_one_line_errors(tmp_path, capsys, args, where):
    make_run(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["report", *args(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("sprout report: error:") and where in err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("instruction, expected", [
    ("Write a poem about the sea.", ("write", "poem")),
    ("Write a cover letter for a job.", ("write", "letter")),
    ("Please give me three examples of fruits.", ("give", "example")),
    ("Can you please generate a list of names?", ("generate", "list")),
    ("I want you to rewrite the following sentence in French.", ("rewrite", "sentence")),
    ("Classify the sentiment of this tweet.", ("classify", "sentiment")),
    ("Given a list of numbers, sort them in ascending order.", ("sort", None)),
    ("Tell me a joke.", ("tell", "joke")),
    ("Summarize the stories below.", ("summarize", "story")),
    ("Write a poem describing the moon.", ("write", "poem")),
    ("Explain how vaccines work.", ("explain", None)),
    ("What is the capital of France?", (None, None)),
    ("Ocean facts for kids", (None, None)),
    ("", (None, None)),
])
def test_heuristic_verb_noun(instruction, expected):
    assert heuristic_verb_noun(instruction) == expected


def test_top_verb_nouns_counts_pairs_only():
    pairs, _ = verb_noun_pairs(INSTRUCTIONS, "heuristic")
    top = dict(top_verb_nouns(pairs, verbs=3, nouns=2))
    assert list(top) == ["write", "generate", "classify"]  # 4, 3 then the first of the 2-pair ties
    assert top["write"] == [("haiku", 1), ("letter", 1)]  # four objects once each: alphabetical


def test_nearest_neighbour_scores_match_brute_force():
    texts = INSTRUCTIONS[:12]
    brute = [max(rouge_l(a, b) for j, b in enumerate(texts) if j != i) for i, a in enumerate(texts)]
    found = nearest_neighbours(texts)
    assert [f[0] for f in found] == brute
    assert all(rouge_l(t, f[1]) == f[0] and f[1] != t for t, f in zip(texts, found))
    assert nearest_neighbours(["alone"]) == [None]


def test_spacy_parser_when_installed():
    try:
        pairs, method = verb_noun_pairs(["Write a poem about the sea.", "What is love?"], "spacy")
    except UserError as err:  # spaCy or its English pipeline is missing
        pytest.skip(f"spaCy with an English pipeline is not installed ({err})")
    assert pairs == [("write", "poem"), (None, None)] and "spaCy" in method


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(full_report, tmp_path):
    # The report itself has no script; a copy gets one that counts the images the browser decoded.
    probe = ("<script>window.addEventListener('load', () => { const all = [...document.images]; "
             "document.title = 'decoded ' + all.filter(i => i.complete && i.naturalWidth > 0).length "
             "+ ' of ' + all.length; });</script>")
    copy = tmp_path / "probe.html"
    copy.write_text(full_report.read_text(encoding="utf-8").replace("</body>", probe + "</body>"), encoding="utf-8")
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", copy.as_uri()],
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r"<title>decoded (\d+) of (\d+)</title>", proc.stdout)
    assert match, proc.stdout[:500] + proc.stderr[-1000:]
    assert (int(match[1]), int(match[2])) == (7, 7)
