"""The generation pipeline: seeds -> prompts -> teacher -> parsed, filtered, novel records.

Two modes:
- `alpaca`: one request yields a batch of complete tasks (instruction, input, output).
- `self-instruct`: bootstrap new instructions from k seed + m machine examples; the novelty filter
  runs right there, as in the paper's code, so a kept instruction joins the pool that later
  prompts sample from; then classification identification, then instances (output-first for
  classification, input-first otherwise).

Everything runs on one asyncio loop: up to `concurrency` units of work are in flight, and each
reply is parsed, filtered and written the moment it arrives. Filtering a candidate costs
microseconds to milliseconds (see benchmarks/novelty.py), so the teacher is never kept waiting.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter

from generator.client import Completion, TeacherClient
from generator.filters import FilterConfig, InstructionFilter, clean_instances
from generator.gen_config import MODE_DEFAULTS, GenerateConfig
from generator.novelty import NoveltyPool
from generator.parsing import PARSERS, Parsed, response_format
from generator.runs import RunDir, now_iso
from generator.seeds import SeedTask
from generator.templates import Template


class Pipeline:
    def __init__(self, cfg: GenerateConfig, seeds: list[SeedTask], templates: dict[str, Template],
                 client: TeacherClient, run: RunDir, structured: bool, decontam=None, progress=None):
        self.cfg, self.seeds, self.templates, self.client, self.run = cfg, seeds, templates, client, run
        self.structured = structured
        self.decontam = decontam  # generator.decontam.Decontaminator or None
        self.progress = progress  # callable(pipeline) after each change, e.g. a progress bar
        self.rng = random.Random(cfg.seed + len(run.records))
        self.params = {**MODE_DEFAULTS[cfg.mode], **{k: v for k, v in cfg.sampling().items() if v is not None}}
        self.instr_filter = InstructionFilter(FilterConfig(cfg.min_words, cfg.max_words, list(cfg.blocklist)))
        self.pool = NoveltyPool(threshold=cfg.novelty_threshold, use_stemmer=cfg.stem)
        for s in seeds:
            self.pool.add(s.instruction)
        self.machine: list[tuple[str, str]] = []  # (instruction_id, instruction) kept so far
        self.kept = 0
        for rec in run.records:  # rebuild from data.jsonl when resuming
            if rec.get("instance_index", 0) == 0:
                self.pool.add(rec["instruction"])
                self.machine.append((rec["instruction_id"], rec["instruction"]))
                self.kept += 1
        prev = run.previous_stats
        self.rejections: Counter = Counter(prev.get("rejections", {}))
        self.requests = 0
        self.parse_failures = prev.get("parse_failures", 0)
        self.in_progress = 0  # instructions past novelty, awaiting instances (self-instruct)
        self.started = time.monotonic()
        self.tokens_at_start = (client.usage.prompt_tokens, client.usage.completion_tokens)

    # -- the loop -------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.kept >= self.cfg.num_instructions

    async def run_until_done(self) -> None:
        unit = self._alpaca_unit if self.cfg.mode == "alpaca" else self._self_instruct_unit
        budget = 20 * self.cfg.num_instructions + 200 if self.cfg.max_requests is None else self.cfg.max_requests
        pending: set[asyncio.Task] = set()
        try:
            while not self.done:
                # keep the teacher busy, but do not start work the target no longer needs
                while len(pending) < self.cfg.concurrency and self.kept + self.in_progress < self.cfg.num_instructions:
                    if self.requests >= budget:
                        break
                    self.requests += 1  # the unit's first request, counted at launch so the budget is exact
                    pending.add(asyncio.create_task(unit()))
                if not pending:
                    self._give_up(budget)
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in finished:
                    t.result()  # a permanent teacher error ends the run (records so far are safe)
        finally:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _give_up(self, budget: int) -> None:
        from generator.errors import UserError

        top = ", ".join(f"{k}: {v}" for k, v in self.rejections.most_common(5)) or "none"
        raise UserError(f"stopped after {self.requests} requests (--max-requests {budget}) with {self.kept} of "
                        f"{self.cfg.num_instructions} instructions kept; top rejection reasons: {top}. "
                        f"See {self.run.rejected_path}; loosen the filters or use a stronger teacher.")

    async def _ask(self, stage: str, variables: dict, max_tokens: int, stop: list[str] | None = None,
                   structured: bool | None = None, first: bool = False, **params) -> tuple[Completion, Parsed, Template]:
        tmpl = self.templates[stage]
        structured = self.structured if structured is None else structured
        prompt = tmpl.render(structured=structured, **variables)
        kwargs = {"max_tokens": max_tokens, **params}
        if structured:
            kwargs["response_format"] = response_format(tmpl.parser)
        elif stop and self.cfg.api == "completion":
            # The papers' stop sequences end a *continued* list; a chat reply is not a
            # continuation and often opens with "Task:" or a blank line, so chat gets none.
            kwargs["stop"] = stop
        if not first:  # a unit's first request was counted when the unit was launched
            self.requests += 1
        if self.cfg.api == "completion":
            out = await self.client.complete(prompt.completion, **kwargs)
        else:
            out = await self.client.chat(prompt.messages(), **kwargs)
        start = variables.get("start") if self.cfg.api == "completion" else None
        parsed = PARSERS[tmpl.parser](out.texts[0], out.finish_reasons[0], structured, start)
        if parsed.failures:
            self.parse_failures += parsed.failures
            self._reject({"stage": stage, "raw": out.texts[0][:2000]}, "parse_error", parsed.failures)
        if parsed.cut:
            self.rejections["cut_by_length_limit"] += parsed.cut
        return out, parsed, tmpl

    # -- alpaca ---------------------------------------------------------------------------------

    async def _alpaca_unit(self) -> None:
        k = min(self.cfg.examples_per_prompt, len(self.seeds))
        examples = self.rng.sample(self.seeds, k)
        shown = [{"id": s.id, "instruction": s.instruction, **(s.instances[0] if s.instances else
                                                                  {"input": "", "output": ""})} for s in examples]
        p = self.params
        out, parsed, tmpl = await self._ask(
            "alpaca", {"examples": shown, "num_tasks": self.cfg.tasks_per_prompt, "start": k + 1},
            p["max_tokens"], stop=[f"\n{k + self.cfg.tasks_per_prompt + 1}. Instruction"], first=True,
            temperature=p["temperature"], top_p=p["top_p"], presence_penalty=p["presence_penalty"])
        prov = {"templates": {"alpaca": self._tmpl_info(tmpl)}, "examples": {"seed": [s.id for s in examples],
                                                                             "machine": []}}
        for task in parsed.items:
            novel = self._admit(task["instruction"])
            if novel is None:
                continue
            kept, reasons, task_reason = clean_instances([task], self._filter_cfg())
            if task_reason:
                self._reject(task, task_reason)
                continue
            self._accept(task["instruction"], kept, False, novel, prov, out)

    # -- self-instruct --------------------------------------------------------------------------

    async def _self_instruct_unit(self) -> None:
        cfg, p = self.cfg, self.params
        seeds = self.rng.sample(self.seeds, min(cfg.seed_examples, len(self.seeds)))
        machine = self.rng.sample(self.machine, min(cfg.machine_examples, len(self.machine)))
        shown = [{"id": s.id, "instruction": s.instruction} for s in seeds]
        shown += [{"id": mid, "instruction": text} for mid, text in machine]
        self.rng.shuffle(shown)  # the paper mixes seed and machine examples in one list
        n = len(shown)
        out, parsed, tmpl = await self._ask(
            "bootstrap", {"examples": shown, "num_instructions": cfg.instructions_per_prompt, "start": n + 1},
            p["max_tokens"], stop=[f"\n{n + cfg.instructions_per_prompt + 1}.", "\n\n"], first=True,
            temperature=p["temperature"], top_p=p["top_p"], presence_penalty=p["presence_penalty"])
        prov = {"templates": {"bootstrap": self._tmpl_info(tmpl)},
                "examples": {"seed": [s.id for s in seeds], "machine": [mid for mid, _ in machine]}}
        jobs = []
        for text in parsed.items:
            if self.kept + self.in_progress >= cfg.num_instructions:
                break  # enough candidates are already on their way
            novel = self._admit(text)
            if novel is not None:
                self.in_progress += 1
                jobs.append(self._complete_task(text, novel, prov))
        await asyncio.gather(*jobs)

    async def _complete_task(self, instruction: str, novel: list, prov: dict) -> None:
        p = self.params
        try:
            # Always the text form here, as in the paper (a Yes/No in 3 tokens at temperature 0):
            # small models under a boolean JSON schema were seen to answer `true` to everything.
            # An unreadable answer counts as a parse failure and means "not classification".
            out, parsed, ctmpl = await self._ask("classify", {"instruction": instruction}, 3,
                                                 temperature=0.0, structured=False)
            is_cls = bool(parsed.items and parsed.items[0])
            stage = "instances_output_first" if is_cls else "instances_input_first"
            out, parsed, itmpl = await self._ask(
                stage, {"instruction": instruction, "max_instances": self.cfg.max_instances},
                p["instance_max_tokens"], stop=["\nTask:", "Task:"],
                temperature=p["instance_temperature"], top_p=p["instance_top_p"])
            items = parsed.items[: self.cfg.max_instances]
            kept, reasons, task_reason = clean_instances(items, self._filter_cfg())
            for reason, count in reasons.items():
                self.rejections[reason] += count
            if task_reason:
                self._reject({"instruction": instruction, "instances": items}, task_reason)
                return
            prov = {**prov, "templates": {**prov["templates"], "classify": self._tmpl_info(ctmpl),
                                          stage: self._tmpl_info(itmpl)}}
            self._accept(instruction, kept, is_cls, novel, prov, out)
        finally:
            self.in_progress -= 1

    # -- shared ---------------------------------------------------------------------------------

    def _filter_cfg(self) -> FilterConfig:
        return self.instr_filter.cfg

    def _admit(self, instruction: str) -> list | None:
        """Instruction filters, decontamination, then novelty; the most similar pool items if kept."""
        reason = self.instr_filter(instruction)
        if reason is None and self.decontam is not None:
            reason = self.decontam.check(instruction)
        if reason:
            self._reject({"instruction": instruction}, reason)
            return None
        novel, similar = self.pool.check_and_add(instruction, k=5)
        similar = [{"instruction": t, "rouge_l": round(s, 4)} for t, s in similar]
        if not novel:
            self._reject({"instruction": instruction, "most_similar": similar[:1]}, "not_novel")
            return None
        return similar

    def _accept(self, instruction: str, instances: list[dict], is_cls: bool, similar: list, prov: dict,
                out: Completion) -> None:
        if self.done:
            self._reject({"instruction": instruction}, "over_target")
            return
        iid = uuid.uuid4().hex[:12]
        common = {
            "instruction_id": iid, "is_classification": is_cls, "num_instances": len(instances),
            "mode": self.cfg.mode, "templates": prov["templates"],
            "teacher": {"model": out.model, "endpoint": out.endpoint, "api": self.cfg.api,
                        "structured": self.structured},
            "sampling": self.params, "examples": prov["examples"], "most_similar": similar,
            "finish_reason": out.finish_reasons[0], "prompt_tokens": out.prompt_tokens,
            "completion_tokens": out.completion_tokens, "created_at": now_iso(), "run_id": self.run.run_id,
        }
        records = [{"id": f"{iid}-{i}", "instruction": instruction, "input": inst["input"],
                    "output": inst["output"], "instance_index": i, **common} for i, inst in enumerate(instances)]
        self.run.write_group(records)
        self.machine.append((iid, instruction))
        self.kept += 1
        if self.progress:
            self.progress(self)

    def _reject(self, rec: dict, reason: str, count: int = 1) -> None:
        self.rejections[reason] += count
        self.run.write_rejected({**rec, "reason": reason, "created_at": now_iso()})
        if self.progress:
            self.progress(self)

    @staticmethod
    def _tmpl_info(t: Template) -> dict:
        return {"name": t.name, "sha256": t.sha256}

    def stats(self) -> dict:
        elapsed = time.monotonic() - self.started
        u = self.client.usage
        completion = u.completion_tokens - self.tokens_at_start[1]
        prev = self.run.previous_stats
        return {
            "run_id": self.run.run_id, "mode": self.cfg.mode, "target": self.cfg.num_instructions,
            "kept_instructions": self.kept,
            "records": sum(1 for _ in open(self.run.data_path, encoding="utf-8")),
            "rejections": dict(self.rejections.most_common()), "parse_failures": self.parse_failures,
            "requests": prev.get("requests", 0) + self.requests,
            "retries": prev.get("retries", 0) + u.retries,
            "prompt_tokens": prev.get("prompt_tokens", 0) + u.prompt_tokens - self.tokens_at_start[0],
            "completion_tokens": prev.get("completion_tokens", 0) + completion,
            "elapsed_s": round(prev.get("elapsed_s", 0) + elapsed, 2),
            "session_completion_tokens_per_s": round(completion / elapsed, 2) if elapsed else 0.0,
            "structured": self.structured,
        }
