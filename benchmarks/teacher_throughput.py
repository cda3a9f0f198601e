"""Completion tokens/s through Sprout's TeacherClient vs a plain asyncio + openai loop, same
prompts, same server, at concurrency 1, 8 and 64, measured side by side in one run.

    python benchmarks/teacher_throughput.py [URL] [--tokens 64] [--rounds 2]

Without URL it serves the embedded model here. Each request asks for exactly --tokens tokens
(vLLM's ignore_eos), so both sides do the same work; sides alternate each round to cancel drift.
Target: ours >= 0.95x the plain loop at every concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import openai

from _common import machine, model_name, teacher
from generator.client import ClientConfig, TeacherClient

TOPICS = ["rivers", "chess", "bread", "volcanoes", "jazz", "bees", "tides", "glass", "maps of stars", "kites"]


def prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} (#{i})."}]
            for i in range(n)]


async def plain_loop(url: str, model: str, msgs, concurrency: int, params: dict) -> int:
    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)

    async def one(m):
        async with sem:
            r = await client.chat.completions.create(model=model, messages=m, **params)
            return r.usage.completion_tokens

    try:
        return sum(await asyncio.gather(*[one(m) for m in msgs]))
    finally:
        await client.close()


async def ours(url: str, model: str, msgs, concurrency: int, params: dict) -> int:
    async with TeacherClient(url, model=model, cfg=ClientConfig(concurrency=concurrency)) as c:
        outs = await asyncio.gather(*[c.chat(m, **params) for m in msgs])
    return sum(o.completion_tokens for o in outs)


def measure(fn, *args) -> float:
    t = time.perf_counter()
    tokens = asyncio.run(fn(*args))
    return tokens / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", nargs="?")
    ap.add_argument("--model")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", default="1,8,64")
    args = ap.parse_args()
    params = {"max_tokens": args.tokens, "temperature": 0.8, "extra_body": {"ignore_eos": True}}
    with teacher(args.url) as (url, model):
        model = model_name(url, args.model or model)
        print(f"machine: {machine()}\nteacher: {url} model {model}, {args.tokens} tokens per request")
        print(f"{'concurrency':>11} {'plain tok/s':>12} {'ours tok/s':>11} {'ratio':>6}")
        asyncio.run(plain_loop(url, model, prompts(4), 4, params))  # warm-up
        for c in (int(x) for x in args.concurrency.split(",")):
            n = max(4, 2 * c) if c > 1 else 6
            msgs = prompts(n)
            plain, mine = [], []
            for r in range(args.rounds):
                order = [(plain_loop, plain), (ours, mine)]
                for fn, acc in (order if r % 2 == 0 else order[::-1]):
                    acc.append(measure(fn, url, model, msgs, c, params))
            p, o = sum(plain) / len(plain), sum(mine) / len(mine)
            print(f"{c:>11} {p:>12.1f} {o:>11.1f} {o / p:>6.2f}")


if __name__ == "__main__":
    main()
