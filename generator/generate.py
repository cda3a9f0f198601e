"""`sprout generate`: flags and config -> a run directory filled to the target, resumable."""

from __future__ import annotations

import asyncio
import sys
import time

import openai

from generator.budget import ContextBudget
from generator.client import ClientConfig, TeacherClient, api_key_from_env
from generator.config import add_flags, load_config
from generator.errors import UserError
from generator.gen_config import GenerateConfig, steering
from generator.resources import data_dir
from generator.runs import RunDir, file_sha256
from generator.scoring import make_scorer
from generator.seeds import load_seeds
from generator.templates import STAGES, load_templates


def add_generate_args(p) -> None:
    """GenerateConfig's flags (generator/gen_config.py holds each one's help and default)."""
    add_flags(p, GenerateConfig)
    p.add_argument("--force", action="store_true", help="continue a run whose settings changed")
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
