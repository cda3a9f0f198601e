"""Capture real teacher replies to our templates as golden files for tests/test_parsing_golden.py.
Run by hand against a running teacher (not a test):

    PYTHONPATH=. python tests/replies/capture.py http://127.0.0.1:8011/v1

Each reply is saved as tests/replies/real_<stage>_<n>.json: {stage, api, structured, prompt_vars,
request, reply, finish_reason, expected}. `expected` starts as the parser's reading, marked
"unchecked"; a person reads the reply, corrects `expected` by hand and removes the mark -- the
golden test refuses files still marked, so a parser's output is never its own reference.
Settings are the pipeline's (generator/pipeline.py, MODE_DEFAULTS); max_tokens is capped so the
files stay small and prompts fit the embedded model's 2048-token context.
"""

from __future__ import annotations

import json
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from generator.gen_config import MODE_DEFAULTS
from generator.parsing import PARSERS, response_format
from generator.seeds import load_seeds
from generator.templates import load_templates

HERE = Path(__file__).parent
SI, AL = MODE_DEFAULTS["self-instruct"], MODE_DEFAULTS["alpaca"]


def plan(seeds, rng):
    cls = [s for s in seeds if s.is_classification]
    gen = [s for s in seeds if not s.is_classification]
    jobs = []
    for i, (api, structured) in enumerate([("chat", False)] * 3 + [("chat", True)] * 2 + [("completion", False)] * 2):
        ex = [{"id": s.id, "instruction": s.instruction} for s in rng.sample(seeds, 8)]
        jobs.append(("bootstrap", api, structured, {"examples": ex, "num_instructions": 8, "start": 9},
                     {"max_tokens": 300, "temperature": SI["temperature"], "top_p": SI["top_p"],
                      "presence_penalty": SI["presence_penalty"], "seed": i, "stop": ["\n17.", "\n\n"]}))
    for i, (api, structured) in enumerate([("chat", False)] * 2 + [("chat", True)] * 2 + [("completion", False)]):
        ex = [{"id": s.id, "instruction": s.instruction, **s.instances[0]} for s in rng.sample(seeds, 3)]
        jobs.append(("alpaca", api, structured, {"examples": ex, "num_tasks": 4, "start": 4},
                     {"max_tokens": 500, "temperature": AL["temperature"], "top_p": AL["top_p"], "seed": i,
                      "stop": ["\n8. Instruction"]}))
    for api, structured, s in ([("chat", False, x) for x in rng.sample(cls, 2) + rng.sample(gen, 2)]
                               + [("chat", True, rng.choice(cls)), ("chat", True, rng.choice(gen))]
                               + [("completion", False, rng.choice(cls)), ("completion", False, rng.choice(gen))]):
        jobs.append(("classify", api, structured, {"instruction": s.instruction}, {"max_tokens": 3 if not structured
                                                                                    else 20, "temperature": 0.0}))
    inst = {"max_tokens": 200, "temperature": SI["instance_temperature"], "top_p": SI["instance_top_p"],
            "presence_penalty": SI["instance_presence_penalty"], "stop": ["\nTask:", "Task:"]}
    for stage, pool in (("instances_input_first", gen), ("instances_output_first", cls)):
        for api, structured in [("chat", False)] * 4 + [("chat", True)] * 2 + [("completion", False)] * 2:
            jobs.append((stage, api, structured, {"instruction": rng.choice(pool).instruction, "max_instances": 5},
                         dict(inst)))
    return jobs


def main(url: str) -> None:
    client = openai.OpenAI(base_url=url, api_key="EMPTY")
    model = client.models.list().data[0].id
    templates = load_templates()
    rng = random.Random(8)
    counts: dict[str, int] = {}
    jobs = []
    for job in plan(load_seeds("seeds/seed_tasks.jsonl"), rng):
        n = counts[job[0]] = counts.get(job[0], 0) + 1
        path = HERE / f"real_{job[0]}_{n:02d}.json"
        if not path.exists():  # a rerun fills in what is missing and never overwrites a checked file
            jobs.append((path, *job))

    def one(path, stage, api, structured, variables, params):
        tmpl = templates[stage]
        prompt = tmpl.render(structured=structured, **variables)
        if structured:
            params.pop("stop", None)
            params["response_format"] = response_format(tmpl.parser)
        elif api == "chat":
            params.pop("stop", None)  # the pipeline sends the papers' stops to completions only
        if api == "chat":
            resp = client.chat.completions.create(model=model, messages=prompt.messages(), **params)
            reply = resp.choices[0].message.content or ""
        else:
            resp = client.completions.create(model=model, prompt=prompt.completion, **params)
            reply = resp.choices[0].text
        finish = resp.choices[0].finish_reason
        start = variables.get("start") if api == "completion" else None
        parsed = PARSERS[tmpl.parser](reply, finish, structured, start)
        record = {"stage": stage, "api": api, "structured": structured, "teacher": model, "prompt_vars": variables,
                  "request": {k: v for k, v in params.items() if k != "response_format"}, "reply": reply,
                  "finish_reason": finish, "start": start, "unchecked": True,
                  "expected": {"items": parsed.items, "failures": parsed.failures, "cut": parsed.cut}}
        path.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(path.name, finish, repr(reply[:80]), flush=True)

    with ThreadPoolExecutor(8) as pool:  # the server batches them; one at a time is slow on CPU
        list(pool.map(lambda job: one(*job), jobs))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8011/v1")
