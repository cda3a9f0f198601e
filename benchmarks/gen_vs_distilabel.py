"""`sprout generate` vs distilabel's Self-Instruct pipeline on the same job, each in its own subprocess.

Same teacher server, same seed file, same target number of kept instructions, same filters:

  Sprout      `python -m trainer.cli generate --mode self-instruct --responses 0 --constraints 0 --seeds SEEDS
              --out DIR --teacher-url URL --num-instructions N` (everything else at its defaults: 8 instructions
              asked per bootstrap request from 6 seed + 2 machine examples, temperature 0.7, top_p 0.5,
              presence penalty 2, max_tokens 512, 64 sequences in flight, JSON-schema replies on vLLM).
              Why this mode: distilabel's SelfInstruct writes bare instructions from seed text, which is
              Sprout's self-instruct *bootstrap* stage; alpaca mode writes instruction + input + output in
              one reply, so its tokens per task pay for outputs distilabel never writes. Self-instruct mode
              then classifies each new instruction and writes its instances -- work distilabel does not
              do, and an instruction only counts as kept once it has a valid instance, which is stricter
              than distilabel's count. `--responses 0` skips the separate response stage (distilabel has
              none); `--constraints 0` goes with it (constraints are checked on responses). The run's
              stats.json splits the teacher's tokens by stage (`usage_by_stage`: bootstrap, classify,
              instances), so both the instruction-writing tokens and the total are reported.
              `--sprout-mode alpaca` runs the default mode instead (instruction stage = everything).

  distilabel  distilabel 1.5.3's `SelfInstruct` task on `OpenAILLM(base_url=URL, model=..., api_key="EMPTY",
              timeout=600)` -- the task its docs give for this job. Its prompt is distilabel's own
              self-instruct.jinja2 ("Develop {num_instructions} user queries that can be received by the
              given AI application and applicable to the provided context ..."), with `input` (the
              "Context") = one seed instruction per request, seeds taken in a fixed shuffled order and
              cycled. Settings matched to Sprout's bootstrap: num_instructions 8, generation_kwargs
              temperature 0.7, top_p 0.5, presence_penalty 2.0, max_new_tokens 512 (distilabel's default
              128 cuts 8 instructions short). Throughput: an AsyncLLM sends every row of a batch at once,
              so `input_batch_size` is its concurrency: set to the round size (up to --distilabel-batch,
              default 64 = Sprout's sequences in flight). Runs without distilabel's cache
              (`pipeline.run(use_cache=False)`, cache_dir in a temp folder) so every run is real.
              distilabel has no novelty filter, so its instructions go, post hoc and in generation order
              (round, then input row, then line), through Sprout's own `InstructionFilter(FilterConfig())`
              and a ROUGE-L `NoveltyPool(0.7)` that starts with the seed instructions -- after stripping a
              leading list marker ("1.", "2)", "-", "*"), which the task's prompt forbids but a small
              teacher writes anyway (a line that is only a heading such as "# User Queries" is then
              dropped by the filter as starting with punctuation). It generates in rounds until the kept
              count reaches the target (or --distilabel-max-requests requests): each round is sized to
              what is still missing at the yield per request seen so far (prior: half the instructions
              asked for, as Sprout's launcher assumes), at least 8 and at most --distilabel-batch rows,
              so it overshoots the target about as little as Sprout does. `--distilabel-runners` picks
              how each round runs:
                pipeline  a `Pipeline` (LoadDataFromDicts >> SelfInstruct), run once per round -- what
                          the docs build; pays the pipeline's start-up (step processes) every round;
                task      `SelfInstruct(...).load()` once, then `next(task.process(rows))` per round --
                          the docs' standalone use, without the pipeline's overhead.
              distilabel runs in its own virtualenv (--distilabel-python), so its pins do not touch
              Sprout's torch / transformers / vllm: python3 -m venv /work/dlvenv &&
              /work/dlvenv/bin/pip install "distilabel[openai]==1.5.3" requests  (1.5.3 imports requests
              without declaring it).

Measured per side, on the server (vLLM's Prometheus /metrics, the same way for both): completion and
prompt tokens (`vllm:generation_tokens_total`, `vllm:prompt_tokens_total`, after minus before the
side), and the teacher's busy fraction: /metrics sampled every --sample-interval s while the side runs
(its whole process, start-up included), the share of samples with `vllm:num_requests_running` > 0, and
the mean number running. Also the side's wall seconds, its kept instructions and the client-side token
counts (Sprout's per-stage tally; distilabel's per-row `statistics`), which should agree with the
server's unless someone else used the teacher meanwhile (the script says so when they differ by > 3%).
Target (issue 15): fewer teacher tokens per kept instruction than distilabel, and a teacher >= 90% busy.

"Kept" means what passes the same filters; they check length, blocklisted words, one-sentence statements
("Anna is twice as old as Ben.") and novelty, not that a line is an instruction at all. distilabel's task splits its reply into lines and calls every line an
instruction, so with a small teacher its kept set holds echoes of its own prompt, lone sentences, list
items of an answer and lines of code. Read both kept sets (--show N, or every one in --json) before
reading the tokens-per-kept row as like for like.

    python benchmarks/gen_vs_distilabel.py --teacher-url http://127.0.0.1:8011/v1 \\
        --distilabel-python /work/dlvenv/bin/python [--num-instructions 50] [--json FILE] [--show 12]

Without --teacher-url it serves the embedded model here for the run. The teacher must serve nobody
else meanwhile: its counters and gauges are server-wide.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

# Only the standard library up here: the distilabel child runs this file with distilabel's own
# interpreter, which has none of Sprout's dependencies.
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEEDS = ROOT / "seeds" / "seed_tasks.jsonl"
SELF_INSTRUCT_SAMPLING = {"temperature": 0.7, "top_p": 0.5, "presence_penalty": 2.0, "max_new_tokens": 512}


# --- the teacher's /metrics ----------------------------------------------------------------------
_METRIC = re.compile(r"^(vllm:[A-Za-z_:]+)(?:\{[^}]*\})?\s+([-+0-9.eE]+|NaN)$")


def scrape(metrics_url: str) -> dict[str, float]:
    """Every vllm: sample of /metrics, summed over its label sets (one engine, one model here)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m and m.group(2) != "NaN":
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


class Sampler(threading.Thread):
    """Samples requests running / waiting and the load average every `interval` s until stopped."""

    def __init__(self, metrics_url: str, interval: float):
        super().__init__(daemon=True)
        self.url, self.interval = metrics_url, interval
        self.samples: list[tuple[float, float, float, float]] = []  # (t, running, waiting, load1)
        self.failures = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            t = time.monotonic()
            try:
                m = scrape(self.url)
                self.samples.append((t, m.get("vllm:num_requests_running", 0.0),
                                     m.get("vllm:num_requests_waiting", 0.0), os.getloadavg()[0]))
            except OSError:
                self.failures += 1
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        s = self.samples
        if not s:
            return {"samples": 0}
        busy = [x for x in s if x[1] > 0]
        # the same, from the first sample with a request running to the last: start-up excluded
        first = next((i for i, x in enumerate(s) if x[1] > 0), None)
        last = max((i for i, x in enumerate(s) if x[1] > 0), default=None)
        window = s[first:last + 1] if first is not None else []
        return {"samples": len(s), "scrape_failures": self.failures,
                "busy_fraction": len(busy) / len(s),
                "mean_running": sum(x[1] for x in s) / len(s),
                "mean_running_when_busy": sum(x[1] for x in busy) / len(busy) if busy else 0.0,
                "mean_waiting": sum(x[2] for x in s) / len(s),
                "busy_fraction_first_to_last_request":
                    sum(1 for x in window if x[1] > 0) / len(window) if window else 0.0,
                "mean_load_average": sum(x[3] for x in s) / len(s)}


def wait_idle(metrics_url: str, seconds: float = 60) -> bool:
    """Wait for the teacher to have nothing running or waiting (a previous side's cancelled requests
    can take a moment to be aborted); False if it never went idle."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        m = scrape(metrics_url)
        if m.get("vllm:num_requests_running", 0) == 0 and m.get("vllm:num_requests_waiting", 0) == 0:
            return True
        time.sleep(0.5)
    return False


# --- the same kept-instruction rule for distilabel's output --------------------------------------
_LIST_MARKER = re.compile(r"^\s*(?:\d{1,3}\s*[.):]|[-*\u2022])\s+")


class Keeper:
    """Sprout's instruction filters and ROUGE-L novelty pool (seeded with the seed instructions),
    applied one instruction at a time in generation order."""

    def __init__(self, seeds_path: str, threshold: float, target: int):
        from generator.filters import FilterConfig, InstructionFilter
        from generator.novelty import NoveltyPool
        from generator.seeds import load_seeds

        self.filter = InstructionFilter(FilterConfig())
        self.pool = NoveltyPool(threshold=threshold)
        for s in load_seeds(seeds_path):
            self.pool.add(s.instruction)
        self.target, self.kept, self.rejections, self.seen = target, [], Counter(), 0

    def offer(self, line: str) -> None:
        self.seen += 1
        if len(self.kept) >= self.target:
            self.rejections["over_target"] += 1
            return
        text = _LIST_MARKER.sub("", line).strip()
        reason = self.filter(text)
        if reason is None and not self.pool.check_and_add(text, k=0)[0]:
            reason = "not_novel"
        if reason:
            self.rejections[reason] += 1
        else:
            self.kept.append(text)


def _total(x) -> int:
    """distilabel's per-row token statistics: a number, or a list with one per generation."""
    return sum(v or 0 for v in x) if isinstance(x, list) else int(x or 0)


# --- distilabel side: a child running in distilabel's venv, one round per stdin line --------------
def distilabel_child(a) -> int:
    """Reads {"inputs": [...]} lines on stdin; runs each as one round; answers `ROUND {json}`."""
    import logging

    from distilabel.models import OpenAILLM
    from distilabel.steps.tasks import SelfInstruct

    logging.getLogger("httpx").setLevel(logging.WARNING)
    sampling = {**SELF_INSTRUCT_SAMPLING, "max_new_tokens": a.max_tokens}

    def llm():
        return OpenAILLM(base_url=a.url, model=a.model, api_key="EMPTY", timeout=600, generation_kwargs=sampling)

    task = None
    if a.runner == "task":  # the docs' standalone use: load once, process each round's rows
        task = SelfInstruct(llm=llm(), num_instructions=a.per_request, input_batch_size=a.batch)
        task.load()
    for round_no, line in enumerate(sys.stdin):
        msg = json.loads(line)
        if msg.get("stop"):
            break
        rows = [{"input": s, "idx": i} for i, s in enumerate(msg["inputs"])]
        t0 = time.monotonic()
        if a.runner == "task":
            out = []
            for i in range(0, len(rows), a.batch):
                out.extend(next(task.process(rows[i:i + a.batch])))
        else:
            from distilabel.pipeline import Pipeline
            from distilabel.steps import LoadDataFromDicts

            with Pipeline(name=f"gen-vs-sprout-{round_no}", cache_dir=a.work) as pipeline:
                load = LoadDataFromDicts(data=rows, batch_size=min(len(rows), a.batch))
                si = SelfInstruct(llm=llm(), num_instructions=a.per_request, input_batch_size=min(len(rows), a.batch))
                load >> si
            distiset = pipeline.run(use_cache=False)
            out = list(distiset["default"]["train"])
        out.sort(key=lambda r: r["idx"])
        stats = [next((v for k, v in (r.get("distilabel_metadata") or {}).items() if k.startswith("statistics_")),
                      None) or {} for r in out]
        print("ROUND " + json.dumps({
            "instructions": [r.get("instructions") or [] for r in out],
            "prompt_tokens": sum(_total(s.get("input_tokens")) for s in stats),
            "completion_tokens": sum(_total(s.get("output_tokens")) for s in stats),
            "rows": len(out), "seconds": time.monotonic() - t0}), flush=True)
    return 0


def run_distilabel(a, runner: str, url: str, model: str, work: Path) -> dict:
    """Drive a distilabel child round by round, filtering as its instructions come back."""
    keeper = Keeper(a.seeds, a.novelty_threshold, a.num_instructions)
    with open(a.seeds, encoding="utf-8") as f:
        seeds = [json.loads(x)["instruction"] for x in f if x.strip()]
    random.Random(a.seed).shuffle(seeds)
    budget = a.distilabel_max_requests or 20 * a.num_instructions + 200
    cache = work / f"distilabel-{runner}"
    cache.mkdir()
    cmd = [a.distilabel_python, __file__, "--side", "distilabel", "--runner", runner, "--url", url,
           "--model", model, "--work", str(cache), "--per-request", str(a.per_request),
           "--batch", str(a.distilabel_batch), "--max-tokens", str(a.max_tokens)]
    env = {**os.environ, "DISTILABEL_LOG_LEVEL": "WARNING"}
    err_path = work / f"distilabel-{runner}.stderr"
    requests = cursor = 0
    rounds, raw = [], []
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                cwd=ROOT, env=env)
        try:
            while len(keeper.kept) < a.num_instructions and requests < budget:
                # size the round to what is missing at the yield seen so far (prior: half of what
                # a request asks for), so the last round overshoots little
                per_request = (len(keeper.kept) + a.per_request / 2) / (requests + 1)
                missing = a.num_instructions - len(keeper.kept)
                n = min(max(8, math.ceil(missing / max(per_request, 0.05))), a.distilabel_batch, budget - requests)
                inputs = [seeds[(cursor + i) % len(seeds)] for i in range(n)]
                cursor += n
                proc.stdin.write(json.dumps({"inputs": inputs}) + "\n")
                proc.stdin.flush()
                while True:
                    line = proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"the distilabel child ended; see {err_path}:\n"
                                           + err_path.read_text()[-4000:])
                    if line.startswith("ROUND "):
                        break
                r = json.loads(line[6:])
                requests += n
                for lines in r["instructions"]:
                    raw.append(lines)
                    for text in lines:
                        keeper.offer(text)
                rounds.append({"requests": n, "lines": sum(map(len, r["instructions"])), "kept_after": len(keeper.kept),
                               "seconds": round(r["seconds"], 2), "prompt_tokens": r["prompt_tokens"],
                               "completion_tokens": r["completion_tokens"]})
                print(f"  distilabel {runner} round {len(rounds)}: {n} requests, kept {len(keeper.kept)}/"
                      f"{a.num_instructions}, {r['seconds']:.1f} s", file=sys.stderr, flush=True)
            proc.stdin.write(json.dumps({"stop": True}) + "\n")
            proc.stdin.close()
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ct = sum(x["completion_tokens"] for x in rounds)
    return {"kept_instructions": len(keeper.kept), "kept": keeper.kept, "requests": requests, "rounds": rounds,
            "lines_returned": keeper.seen, "rejections": dict(keeper.rejections.most_common()),
            "client_prompt_tokens": sum(x["prompt_tokens"] for x in rounds), "client_completion_tokens": ct,
            "instruction_stage_completion_tokens": ct, "stages": {"self_instruct": {"completion_tokens": ct}},
            "raw_outputs_first_5": raw[:5], "generation_s": sum(x["seconds"] for x in rounds)}


# --- Sprout side ---------------------------------------------------------------------------------
def sprout_argv(a, url: str, model: str | None, out: Path) -> list[str]:
    argv = ["generate", "--seeds", str(a.seeds), "--out", str(out), "--teacher-url", url,
            "--num-instructions", str(a.num_instructions), "--mode", a.sprout_mode,
            "--responses", "0", "--constraints", "0",
            "--novelty-threshold", str(a.novelty_threshold)]
    return argv + (["--teacher-model", model] if model else [])


def run_sprout(a, url: str, model: str, work: Path) -> dict:
    out = work / "sprout"
    out.mkdir()
    run = out / "run"
    cmd = [sys.executable, "-m", "trainer.cli"] + sprout_argv(a, url, model, run)
    err_path = work / "sprout.stderr"
    with open(err_path, "w") as err:
        rc = subprocess.run(cmd, check=False, stdout=err, stderr=err, cwd=ROOT).returncode
    if rc != 0:
        raise RuntimeError(f"sprout generate failed ({rc}); see {err_path}:\n" + err_path.read_text()[-4000:])
    stats = json.loads((run / "stats.json").read_text())
    stages = stats["usage_by_stage"]  # the run's own split of the teacher's tokens by stage
    kept = [r["instruction"] for r in map(json.loads, (run / "data.jsonl").read_text().splitlines())
            if r.get("instance_index", 0) == 0]
    usage = [json.loads(x) for x in (run / "usage.jsonl").read_text().splitlines() if x.strip()]
    instr_stage = "bootstrap" if a.sprout_mode == "self-instruct" else a.sprout_mode
    return {"kept_instructions": len(kept), "kept": kept, "requests": stats["requests"], "stats": stats,
            "usage_jsonl": usage, "stages": stages, "generation_s": stats["elapsed_s"],
            "rejections": stats["rejections"],
            "client_prompt_tokens": stats["prompt_tokens"], "client_completion_tokens": stats["completion_tokens"],
            "instruction_stage_completion_tokens": stages.get(instr_stage, {}).get("completion_tokens", 0),
            "command": "python -m trainer.cli " + " ".join(sprout_argv(a, url, model, run))}


# --- driver --------------------------------------------------------------------------------------
def measure(side: str, fn, metrics_url: str, interval: float) -> dict:
    if not wait_idle(metrics_url):
        print(f"warning: the teacher was still busy before {side}: someone else is using it", file=sys.stderr)
    before = scrape(metrics_url)
    sampler = Sampler(metrics_url, interval)
    sampler.start()
    t0 = time.monotonic()
    try:
        r = fn()
    finally:
        wall = time.monotonic() - t0
        busy = sampler.stop()
    after = scrape(metrics_url)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("vllm:generation_tokens_total",
                                                                   "vllm:prompt_tokens_total",
                                                                   "vllm:prompt_tokens_cached_total")}
    r.update(busy)
    r["wall_s"] = wall
    r["server_completion_tokens"] = int(delta["vllm:generation_tokens_total"])
    r["server_prompt_tokens"] = int(delta["vllm:prompt_tokens_total"])
    r["server_prompt_tokens_cached"] = int(delta["vllm:prompt_tokens_cached_total"])
    k = max(r["kept_instructions"], 1)
    r["completion_tokens_per_kept"] = r["server_completion_tokens"] / k
    r["prompt_tokens_per_kept"] = r["server_prompt_tokens"] / k
    r["instruction_stage_tokens_per_kept"] = r["instruction_stage_completion_tokens"] / k
    r["completion_tokens_per_s"] = r["server_completion_tokens"] / wall
    client = r["client_completion_tokens"]
    r["server_vs_client_completion"] = r["server_completion_tokens"] / client if client else None
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher-url",
                   help="OpenAI-compatible base URL of a vLLM server (default: serve the embedded model here)")
    p.add_argument("--teacher-model", help="model name on the teacher (default: the first it serves)")
    p.add_argument("--metrics-url", help="default: the teacher URL without /v1, plus /metrics")
    p.add_argument("--seeds", default=str(DEFAULT_SEEDS))
    p.add_argument("--num-instructions", type=int, default=50, help="target kept instructions (default 50)")
    p.add_argument("--novelty-threshold", type=float, default=0.7)
    p.add_argument("--sprout-mode", default="self-instruct", choices=["self-instruct", "alpaca"])
    p.add_argument("--distilabel-python", default="/work/dlvenv/bin/python",
                   help="interpreter of a virtualenv with distilabel[openai]==1.5.3 (default /work/dlvenv/bin/python)")
    p.add_argument("--distilabel-runners", default="pipeline,task", help="comma-separated: pipeline, task")
    p.add_argument("--distilabel-batch", type=int, default=64,
                   help="distilabel's input_batch_size cap = requests in flight (default 64, Sprout's concurrency)")
    p.add_argument("--distilabel-max-requests", type=int, help="give up after this many (default 20 x target + 200)")
    p.add_argument("--per-request", type=int, default=8, help="SelfInstruct num_instructions (default 8, as Sprout)")
    p.add_argument("--max-tokens", type=int, default=512, help="distilabel max_new_tokens (default 512, as Sprout)")
    p.add_argument("--order", default="sprout,distilabel", help="which side runs first")
    p.add_argument("--sample-interval", type=float, default=0.3, help="seconds between /metrics samples")
    p.add_argument("--seed", type=int, default=0, help="order of the seeds fed to distilabel")
    p.add_argument("--show", type=int, default=0, help="print this many kept instructions of each side")
    p.add_argument("--json", help="also write the figures (and every kept instruction) here")
    # child processes
    p.add_argument("--side", choices=["distilabel"], help=argparse.SUPPRESS)
    p.add_argument("--runner", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.side == "distilabel":
        return distilabel_child(a)

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import machine, model_name, teacher

    runners = [r for r in a.distilabel_runners.split(",") if r]
    if any(r not in ("pipeline", "task") for r in runners):
        p.error("--distilabel-runners: choose from pipeline, task")
    if runners and not Path(a.distilabel_python).exists():
        p.error(f"--distilabel-python {a.distilabel_python}: not found (see the module docstring to make one)")
    order = [s for s in a.order.split(",") if s]
    sides = [s for side in order for s in (["sprout"] if side == "sprout" else [f"distilabel:{r}" for r in runners])]
    work = Path(tempfile.mkdtemp(prefix="sprout-gen-vs-distilabel-"))
    results = {}
    with teacher(a.teacher_url) as (url, served):
        model = model_name(url, a.teacher_model or served)
        metrics_url = a.metrics_url or re.sub(r"/v1/?$", "", url.rstrip("/")) + "/metrics"
        scrape(metrics_url)  # fail early when there is no /metrics
        for side in sides:
            print(f"running {side} ...", file=sys.stderr, flush=True)
            if side == "sprout":
                fn = lambda: run_sprout(a, url, model, work)
            else:
                runner = side.split(":")[1]
                fn = lambda runner=runner: run_distilabel(a, runner, url, model, work)
            results[side] = measure(side, fn, metrics_url, a.sample_interval)
            r = results[side]
            print(f"{side}: kept {r['kept_instructions']} in {r['wall_s']:.1f} s, "
                  f"{r['completion_tokens_per_kept']:.0f} completion tokens per kept, busy {r['busy_fraction']:.0%}",
                  file=sys.stderr, flush=True)

    names = {s: "Sprout" if s == "sprout" else f"distilabel {s.split(':')[1]}" for s in results}
    rows = [("wall seconds", "wall_s", "{:.1f}"),
            ("  of which generating (side's own)", "generation_s", "{:.1f}"),
            ("kept instructions", "kept_instructions", "{:.0f}"),
            ("teacher requests (client side)", "requests", "{:.0f}"),
            ("completion tokens (server)", "server_completion_tokens", "{:.0f}"),
            ("prompt tokens (server)", "server_prompt_tokens", "{:.0f}"),
            ("  of which from prefix cache", "server_prompt_tokens_cached", "{:.0f}"),
            ("completion tokens per kept", "completion_tokens_per_kept", "{:.1f}"),
            ("prompt tokens per kept", "prompt_tokens_per_kept", "{:.1f}"),
            ("instr.-writing completion tok/kept", "instruction_stage_tokens_per_kept", "{:.1f}"),
            ("completion tokens/s (server)", "completion_tokens_per_s", "{:.1f}"),
            ("teacher busy fraction", "busy_fraction", "{:.1%}"),
            ("  same, first to last request", "busy_fraction_first_to_last_request", "{:.1%}"),
            ("mean requests running", "mean_running", "{:.1f}"),
            ("mean requests waiting", "mean_waiting", "{:.1f}"),
            ("server/client completion tokens", "server_vs_client_completion", "{:.3f}"),
            ("mean 1-min load average", "mean_load_average", "{:.2f}")]
    print(f"\nmachine: {machine()}; teacher {url} model {model}; mean 1-min load average while each side ran: "
          + ", ".join(f"{names[s]} {r['mean_load_average']:.2f}" for s, r in results.items())
          + " (2.0 = both cores busy)")
    print(f"job: {a.num_instructions} kept instructions from {a.seeds}, ROUGE-L novelty {a.novelty_threshold} against "
          f"the seeds, Sprout's instruction filters; Sprout --mode {a.sprout_mode} --responses 0 --constraints 0; "
          f"distilabel SelfInstruct num_instructions={a.per_request}, "
          f"{SELF_INSTRUCT_SAMPLING | {'max_new_tokens': a.max_tokens}}, "
          f"input_batch_size <= {a.distilabel_batch}\n")
    ref = next((s for s in results if s != "sprout"), None)
    head = f"{'':36}" + "".join(f"{names[s]:>21}" for s in results)
    print(head + (f"{'Sprout/' + names[ref].replace('distilabel ', 'dl '):>18}" if ref and "sprout" in results else ""))
    for label, key, fmt in rows:
        line = f"{label:36}" + "".join(f"{fmt.format(r[key]) if r.get(key) is not None else '-':>21}"
                                       for r in results.values())
        if ref and "sprout" in results and results[ref].get(key) and results["sprout"].get(key) is not None:
            line += f"{results['sprout'][key] / results[ref][key]:>17.3f}x"
        print(line)
    if "sprout" in results:
        st = results["sprout"]["stages"]
        print("\nSprout's teacher tokens by stage (client side): " + "; ".join(
            f"{k} {v['requests']} requests, {v['completion_tokens']} completion / {v['prompt_tokens']} prompt tokens"
            for k, v in st.items()))
        print("Sprout rejections: " + ", ".join(f"{k} {v}" for k, v in results["sprout"]["rejections"].items()))
    for s, r in results.items():
        if s != "sprout":
            sizes = ", ".join(str(x["requests"]) for x in r["rounds"])
            print(f"{names[s]}: {len(r['rounds'])} rounds ({sizes} requests), "
                  f"{r['lines_returned']} lines returned; rejections: "
                  + ", ".join(f"{k} {v}" for k, v in r["rejections"].items()))
    for s, r in results.items():
        ratio = r.get("server_vs_client_completion")
        if ratio is not None and abs(ratio - 1) > 0.03:
            print(f"note: {names[s]}: the server counted {ratio:.3f}x the completion tokens its client saw "
                  "(cancelled requests, or other traffic on the teacher)")
    if "sprout" in results and ref:
        ours = results["sprout"]
        for s, them in results.items():
            if s == "sprout":
                continue
            total = ours["completion_tokens_per_kept"] / them["completion_tokens_per_kept"]
            instr = ours["instruction_stage_tokens_per_kept"] / them["instruction_stage_tokens_per_kept"]
            print(f"target vs {names[s]}: fewer completion tokens per kept instruction: all stages {total:.2f}x "
                  f"{'PASS' if total < 1 else 'FAIL'}, instruction-writing stage {instr:.2f}x "
                  f"{'PASS' if instr < 1 else 'FAIL'}")
        print(f"target: teacher >= 90% busy during Sprout: {ours['busy_fraction']:.1%} "
              f"{'PASS' if ours['busy_fraction'] >= 0.9 else 'FAIL'}")
    if a.show:
        for s, r in results.items():
            print(f"\n{names[s]}: first {min(a.show, len(r['kept']))} kept instructions")
            for text in r["kept"][:a.show]:
                print("  - " + text.replace("\n", " ")[:200])
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "machine": machine(), "teacher": url, "model": model,
                                            "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
