"""Measure how well each way of asking the classify question agrees with the seeds' own
`is_classification` labels, on a running teacher. Not a test: a measurement, run by hand:

    PYTHONPATH=. python tests/replies/measure_classify.py http://127.0.0.1:8011/v1 [METHODS [TEMPLATE_DIR]]

Methods (comma-separated; default all): free_text (the paper's 3 tokens, parse_yes_no), guided
(vLLM guided choice "Yes"/"No"), guided_space (" Yes"/" No", as the few-shot answers are
tokenized after "?"), logprobs (one token, top 5, likelier of Yes/No; also printed with
contextual calibration against a content-free task); each over the chat and the completion form
of prompts/classify.jinja.
"""

from __future__ import annotations

import asyncio
import math
import sys

import openai

from generator.classify import verdict_from_logprobs, verdict_from_text
from generator.seeds import load_seeds
from generator.templates import load_templates


def _top(resp, api: str) -> dict | None:
    lp = resp.choices[0].logprobs
    if lp is None:
        return None
    if api == "chat":
        return {t.token: t.logprob for t in lp.content[0].top_logprobs} if lp.content else None
    return lp.top_logprobs[0] if lp.top_logprobs else None


async def ask(client, model, api, prompt, method):
    kw = {"model": model, "temperature": 0.0}
    if method == "free_text":
        kw["max_tokens"] = 3
    elif method.startswith("guided"):
        choice = [" Yes", " No"] if method == "guided_space" else ["Yes", "No"]
        kw.update(max_tokens=3, extra_body={"structured_outputs": {"choice": choice}})
    else:
        kw["max_tokens"] = 1
        kw.update({"logprobs": True, "top_logprobs": 5} if api == "chat" else {"logprobs": 5})
    if api == "chat":
        resp = await client.chat.completions.create(messages=prompt.messages(), **kw)
        text = resp.choices[0].message.content or ""
    else:
        resp = await client.completions.create(prompt=prompt.completion, **kw)
        text = resp.choices[0].text
    if method == "logprobs":
        return verdict_from_logprobs(_top(resp, api)), _top(resp, api)
    return verdict_from_text(text), text


def _mass(top: dict | None) -> tuple[float, float]:
    yes = sum(math.exp(lp) for t, lp in (top or {}).items() if t.strip().lower() == "yes")
    no = sum(math.exp(lp) for t, lp in (top or {}).items() if t.strip().lower() == "no")
    return yes, no


def calibrated(top: dict | None, prior: dict | None) -> bool | None:
    (yes, no), (py, pn) = _mass(top), _mass(prior)
    if yes == no == 0.0 or not py or not pn:
        return None
    return yes / py > no / pn


async def main(url: str) -> None:
    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY")
    model = (await client.models.list()).data[0].id
    tmpl = load_templates(sys.argv[3] if len(sys.argv) > 3 else None)["classify"]  # another prompt to compare
    seeds = load_seeds("seeds/seed_tasks.jsonl")
    sem = asyncio.Semaphore(16)
    methods = sys.argv[2].split(",") if len(sys.argv) > 2 else ["free_text", "guided", "guided_space", "logprobs"]

    async def one(api, method, task):
        async with sem:
            return await ask(client, model, api, tmpl.render(structured=False, instruction=task.instruction), method)

    print(f"teacher {model} at {url}; {len(seeds)} seeds, {sum(s.is_classification for s in seeds)} classification")
    print("| api | method | accuracy | unreadable | said yes | recall (yes) | specificity (no) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for api in ("chat", "completion"):
        for method in methods:
            if method == "guided_space" and api == "chat":
                continue
            res = await asyncio.gather(*(one(api, method, s) for s in seeds))
            v = [r[0] for r in res]
            truth = [s.is_classification for s in seeds]
            # an unreadable answer is "not classification", as in the pipeline
            pred = [bool(x) for x in v]
            acc = sum(p == t for p, t in zip(pred, truth)) / len(truth)
            rec = sum(p and t for p, t in zip(pred, truth)) / max(1, sum(truth))
            spec = sum((not p) and (not t) for p, t in zip(pred, truth)) / max(1, len(truth) - sum(truth))
            print(f"| {api} | {method} | {acc:.3f} | {sum(x is None for x in v)} | {sum(pred)} | {rec:.3f} | {spec:.3f} |",
                  flush=True)
            if method == "logprobs":  # contextual calibration: divide by a content-free task's odds
                prior = (await one(api, method, type(seeds[0])(id="cf", instruction="N/A")))[1]
                print("content-free top logprobs:", prior)
                v = [calibrated(r[1], prior) for r in res]
                pred = [bool(x) for x in v]
                acc = sum(p == t for p, t in zip(pred, truth)) / len(truth)
                rec = sum(p and t for p, t in zip(pred, truth)) / max(1, sum(truth))
                spec = sum((not p) and (not t) for p, t in zip(pred, truth)) / max(1, len(truth) - sum(truth))
                print(f"| {api} | logprobs, calibrated | {acc:.3f} | {sum(x is None for x in v)} | {sum(pred)} | "
                      f"{rec:.3f} | {spec:.3f} |", flush=True)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8011/v1"))
