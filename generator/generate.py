"""`sprout generate`: flags and config -> a run directory filled to the target, resumable."""

from __future__ import annotations

import asyncio
import sys
import time

import openai

from generator.budget import ContextBudget
from generator.client import ClientConfig, TeacherClient, api_key_from_env
from generator.config import load_config
from generator.errors import UserError
from generator.gen_config import GenerateConfig, steering
from generator.resources import data_dir
from generator.runs import RunDir, file_sha256
from generator.scoring import add_scoring_flags, make_scorer
from generator.seeds import load_seeds
from generator.templates import STAGES, load_templates


def add_generate_args(p) -> None:
    a = p.add_argument
    a("--seeds", help="seed tasks: Self-Instruct JSONL, Alpaca JSON/JSONL, CSV or parquet (default: shipped seeds)")
    a("--out", help="run directory (created, or resumed if it exists)")
    a("--num-instructions", type=int, help="target number of kept instructions (default 100)")
    a("--mode", choices=["alpaca", "self-instruct", "magpie"], help="alpaca: one pass; magpie: the teacher "
      "writes user requests from its chat template alone (seedless); self-instruct: bootstrap, "
      "classify, instances (default alpaca)")
    a("--teacher-url", help="OpenAI-compatible base URL(s), comma-separated; default: start vLLM here")
    a("--teacher-model", help="model name on the teacher (default: the first one it serves)")
    a("--api-key-env", help="environment variable holding the API key (default: $OPENAI_API_KEY, sent only to api.openai.com)")
    a("--model", help="model to serve when no --teacher-url is given (default: embedded SmolLM2-135M-Instruct)")
    a("--api", choices=["chat", "completion"], help="chat messages or raw completion prompts (default chat)")
    a("--structured", choices=["auto", "json", "text"], help="JSON-schema guided replies (auto: when the "
      "teacher is vLLM) or numbered text")
    a("--templates", help="folder of stage templates replacing ours (see docs/templates.md)")
    a("--template", action="append", metavar="STAGE=FILE", help=f"replace one stage's template; stages: {', '.join(STAGES)}")
    a("--concurrency", type=int, help="sequences in flight; a request for n samples counts n (default 64)")
    a("--max-requests", type=int, help="give up after this many requests (default 20 x target + 200)")
    a("--request-timeout", type=float, help="seconds per request (default 600)")
    a("--fsync", choices=["group", "close"], help="group: fsync data.jsonl after each instruction group, "
      "power-loss safe (default); close: only when the run ends")
    a("--seed", type=int, help="random seed for example sampling")
    a("--tasks-per-prompt", type=int, help="alpaca: tasks asked for per request (default 8)")
    a("--examples-per-prompt", type=int, help="alpaca: seed tasks shown per request (default 3)")
    a("--seed-examples", type=int, help="self-instruct: seed instructions shown per request once machine ones "
      "exist (default 6, the paper's)")
    a("--machine-examples", type=int, help="self-instruct: machine instructions shown per request (default 2)")
    a("--instructions-per-prompt", type=int, help="self-instruct / magpie: instructions asked for per request "
      "(default 8)")
    a("--max-instances", type=int, help="self-instruct: instances per instruction (default 5)")
    a("--temperature", type=float)
    a("--top-p", type=float)
    a("--presence-penalty", type=float, help="presence penalty of the main request (default: mode's)")
    a("--instance-temperature", type=float, help="self-instruct: temperature of the instance request (default 0)")
    a("--instance-top-p", type=float, help="self-instruct: top-p of the instance request (default 1)")
    a("--max-tokens", type=int, help="max tokens of the main request (default: mode's)")
    a("--instance-max-tokens", type=int, help="self-instruct: max tokens of the instance request")
    a("--novelty-threshold", type=float, help="drop instructions with ROUGE-L F above this against the pool (0.7)")
    a("--min-words", type=int)
    a("--max-words", type=int)
    from generator.filters import DEFAULT_BLOCKLIST

    a("--blocklist", action="append", metavar="WORD", help="drop instructions containing this word (repeatable; "
      f"replaces the papers' list: {', '.join(DEFAULT_BLOCKLIST)})")
    a("--stem", action="store_true", default=None, help="Porter-stem words before ROUGE-L (rouge-score's option)")
    a("--decontaminate", action="append", metavar="FILE", help="drop instructions overlapping these files "
      "(13-gram or ROUGE-L); repeatable")
    a("--responses", type=int, help="answer every kept instruction again in chat form, N samples, and keep the "
      "best that passes every check (default 4; 0 keeps the outputs the instruction stage wrote)")
    a("--response-temperature", type=float, help="sampling temperature of the responses (default 0.8)")
    a("--response-max-tokens", type=int, help="max tokens of one response (default 384)")
    a("--response-top-p", type=float, help="top-p of the responses (default 0.95)")
    a("--constraints", type=float, help="share of instructions given verifiable constraints that a response "
      "must meet to be kept (default 0.3; see docs/verifiers.md)")
    a("--max-constraints", type=int, help="most constraints added to one instruction (default 2)")
    a("--turns", help="assistant turns per conversation: K, or a range A-B drawn per conversation (default 1); "
      "above 1 the teacher, playing the user, follows up on each kept answer and every turn is scored like the "
      "first; records then carry `messages`")
    a("--followup", choices=["auto", "magpie", "template"], help="how the teacher writes the user's follow-ups: "
      "magpie (it continues the chat template's user turn after the conversation, as Magpie does for the first "
      "request), template (it is asked to play the user, prompts/followup.jinja) or auto: magpie when Sprout can "
      "render the teacher's chat template, else template (default)")
    add_scoring_flags(p, judge_default="default: the teacher")
    a("--tokenizer", choices=["rouge", "unicode"], help="ROUGE-L words for novelty and decontamination: rouge "
      "(rouge-score's, English; default) or unicode (words of any script, each CJK character a word)")
    a("--no-ascii-start", dest="ascii_start", action="store_false", default=None, help="keep instructions that "
      "start with a non-ASCII character (the papers drop them; needed for other scripts)")
    a("--instance-presence-penalty", type=float, help="self-instruct: presence penalty of the instance "
      "request (default 1.5, the paper's)")
    a("--system-prompt", help="magpie: a system prompt before the user turn, to steer the requests' domain")
    a("--system-prompts", metavar="FILE", help="magpie: system prompts (one per line, or JSONL with "
      "\"system_prompt\"), one per request in turn; each record keeps the one it came from")
    a("--personas", metavar="FILE", help="personas, who the user is (one per line, or JSONL with \"persona\"), one "
      "per request in turn -- magpie: a system turn; alpaca / self-instruct: the stage template asks for tasks "
      "such a person would bring; each record keeps its persona")
    a("--max-model-len", type=int, help="the teacher's context length (default: what vLLM reports; when Sprout "
      "starts the teacher: the model's own)")
    a("--vllm-arg", dest="vllm_args", action="append", metavar="ARG", help="argument for the vLLM server "
      "Sprout starts when no --teacher-url is given, e.g. --vllm-arg=--tensor-parallel-size=2 (repeatable)")
    a("--force", action="store_true", help="continue a run whose settings changed")
    p.set_defaults(func=run_generate)


def _template_overrides(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        stage, sep, path = spec.partition("=")
        if not sep or stage not in STAGES:
            raise UserError(f"--template {spec!r}: expected STAGE=FILE with STAGE one of {', '.join(STAGES)}")
        out[stage] = path
    return out


class _Progress:
    """tqdm bar: kept/target with ETA, rejections by reason, teacher tokens/s; stats.json every 5 s."""

    def __init__(self, total: int, initial: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="instr", desc="kept", dynamic_ncols=True,
                        file=sys.stderr, disable=None)
        self.last_kept, self.last_write = initial, time.monotonic()

    def __call__(self, pipe) -> None:
        if pipe.kept != self.last_kept:
            self.bar.update(pipe.kept - self.last_kept)
            self.last_kept = pipe.kept
        elapsed = time.monotonic() - pipe.started
        tps = (pipe.client.usage.completion_tokens - pipe.tokens_at_start[1]) / max(elapsed, 1e-9)
        top = " ".join(f"{k}={v}" for k, v in pipe.rejections.most_common(3))
        self.bar.set_postfix_str(f"rejected {sum(pipe.rejections.values())} ({top}) {tps:.0f} tok/s", refresh=False)
        if time.monotonic() - self.last_write > 5:
            pipe.run.write_stats(pipe.stats())
            self.last_write = time.monotonic()


async def _served_by_vllm(client: TeacherClient) -> bool:
    # Only "cannot tell" counts as no: a bug here must not silently switch replies to text mode.
    try:
        models = await client.endpoints[0].client.models.list()
    except openai.APIError:
        return False
    return any(getattr(m, "owned_by", "") == "vllm" for m in models.data)


async def _generate(cfg: GenerateConfig, seeds, templates, run: RunDir, base_url: str, model: str | None,
                    decontam) -> dict:
    from generator.pipeline import Pipeline

    key = api_key_from_env(cfg.api_key_env, base_url)
    async with TeacherClient(base_url, model=model, api_key=key,
                             cfg=ClientConfig(concurrency=cfg.concurrency, timeout=cfg.request_timeout)) as client:
        await client.resolve_model()
        vllm = await _served_by_vllm(client)
        structured = cfg.structured == "json" or (cfg.structured == "auto" and vllm)
        budget = await ContextBudget.discover(client, cfg.max_model_len)
        scorer = make_scorer(cfg.score_config(), client, structured=vllm)
        pipe = Pipeline(cfg, seeds, templates, client, run, structured, decontam, scorer=scorer, budget=budget,
                        server_is_vllm=vllm)
        progress = _Progress(cfg.num_instructions, pipe.kept)
        pipe.progress = progress
        try:
            await pipe.run_until_done()
        finally:
            progress.bar.close()
            pipe.flush_usage()
            stats = pipe.stats()
            run.write_stats(stats)
            if scorer.own_client is not None:
                await scorer.own_client.aclose()
        return stats


def run_inputs(cfg: GenerateConfig, templates: dict) -> dict[str, str]:
    """Every file a run reads, by content hash: resuming compares these, not path spellings."""
    inputs = {f"template {k}": t.sha256 for k, t in templates.items()}
    inputs["seeds"] = file_sha256(cfg.seeds or data_dir("seeds") / "seed_tasks.jsonl")
    inputs.update({f"decontaminate file {i + 1}": file_sha256(p) for i, p in enumerate(cfg.decontaminate)})
    for key in ("system_prompts", "personas"):
        if getattr(cfg, key):
            inputs[f"{key.replace('_', ' ')} file"] = file_sha256(getattr(cfg, key))
    return inputs


def generate(cfg: GenerateConfig, force: bool = False) -> dict:
    """Run (or resume) generation to cfg.num_instructions; returns the stats."""
    cfg.validate()
    seeds = load_seeds(cfg.seeds or data_dir("seeds") / "seed_tasks.jsonl", need_instances=cfg.mode == "alpaca")
    templates = load_templates(cfg.templates, _template_overrides(cfg.template))
    if cfg.mode == "magpie":
        steering(cfg)  # a bad --personas / --system-prompts file fails here, before any request
    decontam = None
    if cfg.decontaminate:
        from generator.decontam import Decontaminator

        decontam = Decontaminator.from_files(cfg.decontaminate, cfg.novelty_threshold, tokenizer=cfg.tokenizer)
    run = RunDir(cfg.out).open(cfg, run_inputs(cfg, templates), force=force)
    for note in run.notes:
        print(f"note: {note}", file=sys.stderr)
    kept = sum(1 for r in run.records if r.get("instance_index", 0) == 0)
    if kept >= cfg.num_instructions:  # nothing to do: do not start a teacher
        run.close()
        print(f"{cfg.out} already holds {kept} instructions (target {cfg.num_instructions})", file=sys.stderr)
        return {**run.previous_stats, "kept_instructions": kept, "records": len(run.records)}
    try:
        if cfg.teacher_url:
            return asyncio.run(_generate(cfg, seeds, templates, run, cfg.teacher_url, cfg.teacher_model, decontam))
        from generator.server import ServeConfig, VLLMServer, free_port

        print("starting a vLLM teacher (pass --teacher-url to use a running one)...", file=sys.stderr, flush=True)
        serve = ServeConfig(model=cfg.model, port=free_port(), extra_args=list(cfg.vllm_args))
        if cfg.max_model_len:
            serve.max_model_len = cfg.max_model_len
        with VLLMServer(serve) as srv:
            return asyncio.run(_generate(cfg, seeds, templates, run, srv.base_url, srv.model_name, decontam))
    finally:
        run.close()


def run_generate(args) -> int:
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "func", "command", "force")}
    cfg = load_config(GenerateConfig, args.config, overrides)
    stats = generate(cfg, force=args.force)
    rej = ", ".join(f"{k} {v}" for k, v in stats["rejections"].items()) or "none"
    print(f"kept {stats['kept_instructions']}/{stats['target']} instructions ({stats['records']} records) in "
          f"{cfg.out}/data.jsonl\nrejected: {rej}\nteacher: {stats['requests']} requests, "
          f"{stats['completion_tokens']} completion tokens, {stats['session_completion_tokens_per_s']} tok/s")
    resp = stats.get("responses") or {}
    if resp.get("candidates"):
        rate = resp.get("constraint_pass_rate")
        print(f"responses: {resp['passing']} of {resp['candidates']} candidates passed every check"
              + (f"; the teacher met its constraints in {rate:.0%} of constrained samples" if rate is not None else ""))
    return 0
