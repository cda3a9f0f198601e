"""`sprout generate`'s completion tokens/s vs the raw client sending the same kind of requests
(the alpaca template, same seeds, same sampling, JSON schema when the teacher is vLLM) at the same
concurrency, on the same server, in one run. Target: generate >= 0.9x raw.

    python benchmarks/pipeline_overhead.py [URL] [--requests 96] [--concurrency 32] [--max-tokens 256]

Both sides send exactly --requests requests (generate stops through --max-requests), so both
pay the same tail of the last wave. Without URL the embedded model is served here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time

from _common import machine, model_name, teacher
from generator.client import ClientConfig, TeacherClient
from generator.errors import UserError
from generator.gen_config import MODE_DEFAULTS, GenerateConfig
from generator.generate import generate
from generator.parsing import response_format
from generator.resources import data_dir
from generator.seeds import load_seeds
from generator.templates import load_templates


async def raw(url: str, model: str, n: int, concurrency: int, max_tokens: int, tasks: int) -> float:
    seeds = load_seeds(data_dir("seeds") / "seed_tasks.jsonl")
    tmpl, rng = load_templates()["alpaca"], random.Random(0)
    p = MODE_DEFAULTS["alpaca"]
    async with TeacherClient(url, model=model, cfg=ClientConfig(concurrency=concurrency)) as c:
        msgs = []
        for _ in range(n):
            ex = [{"id": s.id, "instruction": s.instruction, **s.instances[0]} for s in rng.sample(seeds, 3)]
            msgs.append(tmpl.render(examples=ex, num_tasks=tasks, start=4, structured=True).messages())
        t = time.perf_counter()
        await asyncio.gather(*[c.chat(m, max_tokens=max_tokens, temperature=p["temperature"], top_p=p["top_p"],
                                      presence_penalty=p["presence_penalty"],
                                      response_format=response_format("alpaca_tasks")) for m in msgs])
        return c.usage.completion_tokens / (time.perf_counter() - t)


def pipeline(url: str, model: str, n: int, concurrency: int, max_tokens: int, tasks: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = GenerateConfig(out=f"{d}/run", teacher_url=url, teacher_model=model, num_instructions=100_000,
                             max_requests=n, concurrency=concurrency, max_tokens=max_tokens, tasks_per_prompt=tasks,
                             structured="json")
        try:
            generate(cfg)
        except UserError:  # "stopped after N requests": the planned end of this measurement
            pass
        stats = json.load(open(f"{d}/run/stats.json"))
    return stats["session_completion_tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", nargs="?")
    ap.add_argument("--model")
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--tasks-per-prompt", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with teacher(args.url) as (url, model):
        model = model_name(url, args.model or model)
        a = (url, model, args.requests, args.concurrency, args.max_tokens, args.tasks_per_prompt)
        raws, pipes = [], []
        for r in range(args.rounds):  # alternate the order to cancel drift
            if r % 2 == 0:
                raws.append(asyncio.run(raw(*a)))
                pipes.append(pipeline(*a))
            else:
                pipes.append(pipeline(*a))
                raws.append(asyncio.run(raw(*a)))
        rw, pp = sum(raws) / len(raws), sum(pipes) / len(pipes)
        print(f"machine: {machine()}\nteacher: {url} ({model}); {args.requests} requests at concurrency "
              f"{args.concurrency}, max_tokens {args.max_tokens}, {args.rounds} rounds")
        print(f"raw client      {rw:8.1f} completion tok/s   {[round(x, 1) for x in raws]}")
        print(f"sprout generate {pp:8.1f} completion tok/s   {[round(x, 1) for x in pipes]}")
        print(f"ratio generate/raw: {pp / rw:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
