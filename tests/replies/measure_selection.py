"""Measure how each way of choosing among a request's sampled answers agrees with a human answer,
on a running teacher. Not a test: a measurement, run by hand:

    PYTHONPATH=. python tests/replies/measure_selection.py http://127.0.0.1:8011/v1 [CANDIDATES.jsonl]

Requests: the 120 tasks of seeds/seed_tasks.jsonl and the first 80 of seeds/eval_set.jsonl, each
with its human-written answer. Each is answered as `sprout generate` answers (prompts/respond.jinja
in chat form, 6 samples at the default temperature 0.8 / top-p 0.95, 384 tokens) with log-probs,
and checked by generator.scoring's checks. Then, over the requests with two or more passing
answers, the chosen answer's ROUGE-L against the human one (F, precision, recall) for each rule:
relevance (the old default), a random passing answer (the mean over them), the highest mean
token log-prob, consensus (the new default: mean ROUGE-L F to the other samples), and the
shortest; with the paired difference against relevance and its bootstrap 95% interval.
ROUGE-L against one human answer is a crude measure (short references favour short answers:
hence precision and recall apart, and the shortest answer as a control); read the cases too.
An existing CANDIDATES.jsonl (written by an earlier run) is analysed without asking the teacher.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
from pathlib import Path

from rapidfuzz.distance import LCSseq

from generator.client import TeacherClient
from generator.novelty import tokens
from generator.record import user_turn
from generator.scoring import ScoreConfig, Scorer, new_candidate
from generator.templates import load_templates

ROOT = Path(__file__).resolve().parents[2]


def requests() -> list[dict]:
    items = []
    for line in (ROOT / "seeds/seed_tasks.jsonl").read_text().splitlines():
        t = json.loads(line)
        items.append({"instruction": t["instruction"], "input": t["instances"][0]["input"],
                      "ref": t["instances"][0]["output"]})
    for line in (ROOT / "seeds/eval_set.jsonl").read_text().splitlines()[:80]:
        t = json.loads(line)
        items.append({"instruction": t["instruction"], "input": t.get("input", ""), "ref": t["output"]})
    return items


async def sample(url: str, out: Path) -> None:
    template, scorer = load_templates()["respond"], Scorer(ScoreConfig())
    sem = asyncio.Semaphore(48)
    with out.open("w") as f:
        async with TeacherClient(url) as client:
            async def one(it):
                msgs = template.render(structured=False, instruction=it["instruction"], input=it["input"]).messages()
                async with sem:
                    r = await client.chat(msgs, stage="respond", n=6, temperature=0.8, top_p=0.95, max_tokens=384,
                                          logprobs=True)
                cands = [new_candidate(t, fr) for t, fr in zip(r.texts, r.finish_reasons)]
                for i, c in enumerate(cands):
                    c["scores"]["logprob"] = r.mean_logprob(i)
                await scorer(user_turn(it["instruction"], it["input"]), it["instruction"], it["input"], cands, [])
                f.write(json.dumps({**it, "cands": cands}) + "\n")

            await asyncio.gather(*[one(it) for it in requests()])


def prf(text: str, ref: str) -> tuple[float, float, float]:
    """ROUGE-L (precision, recall, F) of `text` against `ref`, rouge-score's tokens."""
    a, b = tokens(text), tokens(ref)
    code = {t: chr(0x4E00 + i) for i, t in enumerate(dict.fromkeys(a + b))}
    lcs = LCSseq.similarity("".join(map(code.get, a)), "".join(map(code.get, b)))
    p, r = (lcs / len(a) if a else 0.0), (lcs / len(b) if b else 0.0)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def passing(c: list[dict]) -> list[int]:
    return [i for i, x in enumerate(c) if not x["reasons"]]


RULES = {
    "relevance (old default)": lambda c: max(passing(c), key=lambda i: (c[i]["scores"]["relevance"], -i)),
    "highest mean log-prob": lambda c: max(passing(c), key=lambda i: (c[i]["scores"]["logprob"], -i)),
    "consensus (default)": lambda c: max(passing(c), key=lambda i: (c[i]["scores"]["consensus"], -i)),
    "shortest (control)": lambda c: min(passing(c), key=lambda i: (len(c[i]["text"]), i)),
}


def analyse(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [r for r in rows if len(passing(r["cands"])) >= 2]
    print(f"{len(rows)} requests with 2+ passing answers\n")
    print(f"{'rule':26s} {'F':>7s} {'P':>7s} {'R':>7s} {'words':>6s}")
    mean = [[statistics.mean(v) for v in zip(*[prf(r["cands"][i]["text"], r["ref"]) for i in passing(r["cands"])])]
            for r in rows]
    print(f"{'random passing (mean)':26s} " + " ".join(f"{statistics.mean(m[k] for m in mean):7.4f}" for k in (2, 0, 1)))
    chosen = {}
    for name, rule in RULES.items():
        chosen[name] = [prf(r["cands"][rule(r["cands"])]["text"], r["ref"]) for r in rows]
        words = statistics.mean(len(r["cands"][rule(r["cands"])]["text"].split()) for r in rows)
        print(f"{name:26s} " + " ".join(f"{statistics.mean(v[k] for v in chosen[name]):7.4f}" for k in (2, 0, 1))
              + f" {words:6.0f}")
    print("\npaired against relevance, ROUGE-L F (95% bootstrap interval; better / worse / same)")
    rng = random.Random(0)
    for name in list(RULES)[1:]:
        d = [a[2] - b[2] for a, b in zip(chosen[name], chosen["relevance (old default)"])]
        boots = sorted(statistics.mean(rng.choices(d, k=len(d))) for _ in range(2000))
        print(f"{name:26s} {statistics.mean(d):+.4f} [{boots[50]:+.4f}, {boots[1949]:+.4f}]  "
              f"{sum(x > 0 for x in d)} / {sum(x < 0 for x in d)} / {sum(x == 0 for x in d)}")


if __name__ == "__main__":
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "selection_candidates.jsonl")
    if not out.exists():
        asyncio.run(sample(sys.argv[1], out))
    analyse(out)
