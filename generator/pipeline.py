"""The generation pipeline: seeds -> prompts -> teacher -> parsed, filtered, novel, scored records.

Instructions come from one of three modes:
- `alpaca`: one request yields a batch of tasks (instruction, input, output);
- `self-instruct`: bootstrap new instructions from k seed + m machine examples; the novelty filter
  runs right there, as in the paper's code, so an instruction that passes it joins the pool that
  later prompts sample from; then classification identification, then instances (output-first for
  classification, input-first otherwise);
- `magpie`: no examples at all -- the teacher gets only its chat template's opening of a user turn
  (after an optional system prompt) through the completion API and writes the user's request
  itself (Magpie, Xu et al. 2024). A small chat model that copies list examples (Self-Instruct's
  bootstrap) still writes natural requests this way. Seeds then serve the novelty pool only.

How each mode writes its instructions is in generator/modes.py, and how a request is rendered,
fitted, sent and parsed in generator/teacher_calls.py; this module runs the loop, admits
instructions (filters, novelty), answers them and keeps the books.

Then responses (`responses` > 0, the default): a list of tasks written by a small teacher in one
breath is mostly noise, so every kept instruction (and input) is answered again in the teacher's
natural chat form, N samples in one request; a share of the instructions first gets verifiable
constraints appended (`constraints`); the candidates are scored (generator.scoring) and the best
one that passes every check becomes the output. Classification tasks keep the label their
instance stage wrote (that is what output-first generation is for).

Everything runs on one asyncio loop: units of work are launched while the expected yield of
those in flight falls short of the target, and each reply is parsed, filtered and written the
moment it arrives. Every rejection is one row of rejected.jsonl with its reason; the counts in
stats.json are those rows, so they survive a crash and agree with the file.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter

from generator import conversation, modes
from generator.budget import ContextBudget
from generator.client import Completion, TeacherClient
from generator.conversation import parse_turns
from generator.filters import FilterConfig, InstructionFilter, copies_shown
from generator.gen_config import MODE_DEFAULTS, GenerateConfig
from generator.interrupts import bookkeeping
from generator.novelty import NoveltyPool
from generator.record import Record, user_turn
from generator.runs import RunDir, now_iso, stage_usage
from generator.scoring import Scorer, constraint_count, content_words, new_candidate
from generator.seeds import SeedTask
from generator.teacher_calls import TeacherCalls
from generator.templates import Template
from generator.verifiers import augment, sample_constraints

# A bootstrap instruction with this many of its prompt's own words (modes._prompt_own), or a
# piece of the prompt's text copied verbatim, restates the prompt rather than asking something.
# Measured on the 50 self-instruct instructions the embedded 135M teacher got kept: 2 words
# flagged 3 restatements ("Review the original task instructions with your AI assistant.") and no
# real task; 1 word flagged 7, three of them real tasks ("Write a story using only 2 sentences.").
# Seed instructions held out from the seed vocabulary, standing in for new real tasks: 0 of 300
# flagged with 60 seeds known, 7 of 1000 with 20, 13 of 1120 with 8. Not used in alpaca mode: its
# long requirements list shares everyday words with real tasks (4 of 300 held-out seeds flagged,
# "Prepare five questions to ask ...").
ECHO_WORDS = 2


class Pipeline(TeacherCalls):
    """One generation session. What generator/modes.py and generator/conversation.py use on it,
    besides its settings and counters (`cfg`, `params`, `rng`, `seeds`, `machine`, `kept`,
    `in_progress`, `requests`, `awaiting`, `replies`, ...) and the teacher calls (`TeacherCalls`):
    `next_steer`, `magpie_prompts`, `magpie_n` and `seed_words` (who asks, what magpie sends, the
    seeds' vocabulary); `admit`, `drop`, `finish` (an instruction in, out without a record, or
    answered and kept); `answer` (scored candidates for one prompt); `reject`, `reject_counts`
    (rejected.jsonl rows); `tmpl_info` (a template's provenance)."""

    def __init__(self, cfg: GenerateConfig, seeds: list[SeedTask], templates: dict[str, Template],
                 client: TeacherClient, run: RunDir, structured: bool, decontam=None, progress=None,
                 scorer: Scorer | None = None, budget: ContextBudget | None = None, server_is_vllm: bool = False):
        self.cfg, self.seeds, self.templates, self.client, self.run = cfg, seeds, templates, client, run
        self.structured = structured
        self.server_is_vllm = server_is_vllm
        self.decontam = decontam  # generator.decontam.Decontaminator or None
        self.progress = progress  # callable(pipeline) after each change, e.g. a progress bar
        self.scorer = scorer or Scorer(cfg.score_config())
        self.budget = budget or ContextBudget()
        self.rng = random.Random(cfg.seed + len(run.records) + len(run.pool_extra))
        self.params = {**MODE_DEFAULTS[cfg.mode], **{k: v for k, v in cfg.sampling().items() if v is not None}}
        self.instr_filter = InstructionFilter(FilterConfig(
            cfg.min_words, cfg.max_words, list(cfg.blocklist), ascii_start=cfg.ascii_start,
            drop_statements=cfg.drop_statements and cfg.mode != "magpie"))
        self.pool = NoveltyPool(threshold=cfg.novelty_threshold, use_stemmer=cfg.stem, tokenizer=cfg.tokenizer)
        for s in seeds:
            self.pool.add(s.instruction)
        # Machine examples are drawn from every instruction that passed the novelty check, as in
        # the paper, so small or highly concurrent runs get them too.
        self.machine: list[tuple[str, str]] = []
        self.kept = 0
        for rec in run.records:  # rebuild from the run's files when resuming
            if rec.get("instance_index", 0) == 0:
                base = rec.get("base_instruction") or rec["instruction"]
                self.pool.add(base)
                self.machine.append((rec["instruction_id"], base))
                self.kept += 1
        for iid, text in run.pool_extra:  # passed novelty, then failed later: still in the paper's pool
            self.pool.add(text)
            self.machine.append((iid, text))
        self.rejections: Counter = Counter(run.rejected_counts)
        # the task vocabulary of the seeds: a word of the prompt found here is not the prompt's own
        self.seed_words = set().union(*(content_words(s.instruction) for s in seeds))
        self.requests = 0
        self.in_progress = 0  # instructions past novelty, not yet kept or dropped
        self.awaiting = 0  # units whose first reply has not come back
        self.replies = self.admitted = self.finished = 0  # for the expected yield of a unit
        self.candidates = self.passing = self.constrained_candidates = self.constrained_passing = 0
        self.turns = parse_turns(cfg.turns)  # (fewest, most) assistant turns per conversation
        self.followup_method = conversation.followup_method(cfg.followup, self.budget.tokenizer)
        self.turn_counts = Counter(r.get("num_turns", 1) for r in run.records)  # records by assistant turns
        from generator.gen_config import steering

        self._steers = steering(cfg)  # who asks: taken in turn, one per request (magpie and bootstrap)
        self._steer_next = 0
        if cfg.mode == "magpie":  # one pre-query per system turn, rendered once
            self.magpie_prompts = {st["system_prompt"]: self.magpie_prompt(st["system_prompt"]) for st in self._steers}
            # Several steers share the target: fewer requests per sample batch, or the first reply
            # (8 samples under one persona) fills a small target alone. Seen: 7 of 8 records from
            # the first of 4 personas; with this cap each persona gets its share.
            share = -(-cfg.num_instructions // len(self._steers))
            self.magpie_n = cfg.instructions_per_prompt if len(self._steers) == 1 else \
                max(1, min(cfg.instructions_per_prompt, share))
        self.started = time.monotonic()
        self.tokens_at_start = (client.usage.prompt_tokens, client.usage.completion_tokens)
        self._stages_at_start = stage_usage(client.usage.by_stage)
        self._usage_mark = self._usage_now()

    # -- the loop -------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.kept >= self.cfg.num_instructions

    def _expected(self) -> float:
        """Instructions the work in flight should still yield (smoothed running averages)."""
        # prior: half of what a reply asks for, until replies say otherwise
        asked = self.cfg.tasks_per_prompt if self.cfg.mode == "alpaca" else self.cfg.instructions_per_prompt
        per_reply = (self.admitted + max(1, asked // 2)) / (self.replies + 1)
        survive = (self.kept + 1) / (self.finished + 1)
        return (self.in_progress + self.awaiting * per_reply) * survive

    async def run_until_done(self) -> None:
        write = {"alpaca": modes.alpaca_unit, "self-instruct": modes.self_instruct_unit,
                 "magpie": modes.magpie_unit}[self.cfg.mode]
        # the budget counts across sessions: a run killed and resumed ten times gets no more requests
        budget = self.cfg.request_budget() - int(self.run.previous_usage.get("requests", 0))
        pending: set[asyncio.Task] = set()
        try:
            while not self.done:
                # keep the teacher busy, but do not start work the target no longer needs
                while len(pending) < self.cfg.concurrency and self.requests < budget and (
                        not pending or self.kept + self._expected() < self.cfg.num_instructions):
                    self.requests += 1  # the unit's first request, counted at launch so the budget is exact
                    self.awaiting += 1
                    pending.add(asyncio.create_task(write(self)))
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
        spent = int(self.run.previous_usage.get("requests", 0)) + self.requests
        raise UserError(f"stopped after {spent} requests (--max-requests {self.cfg.request_budget()}, counted "
                        f"across every session of this run; raise it to go on) with {self.kept} of "
                        f"{self.cfg.num_instructions} instructions kept; top rejection reasons: {top}. "
                        f"See {self.run.rejected_path}; loosen the filters or use a stronger teacher.")

    # -- who asks ---------------------------------------------------------------------------------

    def next_steer(self) -> dict:
        """The next {system_prompt, persona} in turn: each gets its share of requests."""
        steer = self._steers[self._steer_next % len(self._steers)]
        self._steer_next += 1
        return steer

    # -- responses: N candidates per instance, scored, the best kept ------------------------------

    async def finish(self, iid: str, instruction: str, instances: list[dict], is_cls: bool, similar: list,
                     prov: dict, out: Completion) -> None:
        """Answer, score and keep (or drop) one admitted instruction; always ends its in-progress."""
        cfg = self.cfg
        if cfg.responses <= 0 or is_cls:
            return self._accept(iid, instruction, instruction, instances, is_cls, similar, prov, out, [])
        k = constraint_count(self.rng, cfg.constraints, cfg.max_constraints)
        constraints = sample_constraints(self.rng, k) if k else []
        full = augment(instruction, constraints) if constraints else instruction
        answered = await asyncio.gather(*[self._respond(full, inst["input"], constraints) for inst in instances])
        good = []
        for inst, (cands, best, reason, resp) in zip(instances, answered):
            if best is None:
                self.reject({"instruction": full, "input": inst["input"], "constraints": constraints,
                             "candidates": cands}, reason or "no_response")
                continue
            good.append({"input": inst["input"], "output": cands[best]["text"], "candidates": cands,
                         "selected": best, "scores": cands[best]["scores"], "response": resp})
        if not good:
            return self.drop(iid, instruction, "no_valid_response")
        prov = {**prov, "templates": {**prov["templates"], "respond": self.tmpl_info(self.templates["respond"])}}
        if self.turns[1] > 1:  # grow each kept answer into a conversation (generator/conversation.py)
            await asyncio.gather(*[self._converse(full, inst, prov.get("persona")) for inst in good])
            prov["templates"]["followup"] = self.tmpl_info(self.templates["followup"])
        self._accept(iid, full, instruction, good, False, similar, prov, out, constraints)

    async def _converse(self, instruction: str, inst: dict, persona: str | None) -> None:
        """Extend one kept first turn to the drawn number of assistant turns, in place."""
        turns = self.rng.randint(*self.turns)
        inst["num_turns"] = 1
        if turns > 1:
            first = [{"role": "user", "content": user_turn(instruction, inst["input"])},
                     {"role": "assistant", "content": inst["output"]}]
            messages, details = await conversation.extend(self, first, turns, persona)
            inst["num_turns"] = 1 + len(details)
            if details:
                inst["messages"], inst["turns"] = messages, details

    async def _respond(self, instruction: str, inp: str, constraints: list[dict]):
        """(candidates, index kept or None, rejection reason, response sampling settings)."""
        cfg = self.cfg
        variables = {"instruction": instruction, "input": inp}
        fitted = self.fit("respond", variables, cfg.response_max_tokens, False)
        if fitted is None:  # counted as prompt_too_long by `fit`; the instance itself has no response
            return [], None, "no_response", {}
        prompt = self.render("respond", variables, False)
        sampling = {"n": cfg.responses, "temperature": cfg.response_temperature, "top_p": cfg.response_top_p,
                    "max_tokens": fitted[1]}
        answered = await self.answer(prompt, sampling, user_turn(instruction, inp), instruction, inp, constraints)
        if answered is None:  # counted as bad_request by `request`
            return [], None, "no_response", sampling
        cands, best, reason, model = answered
        return cands, best, reason, {**sampling, "model": model}

    async def answer(self, prompt, sampling: dict, user_text: str, instruction: str, inp: str,
                     constraints: list[dict]):
        """N sampled answers to `prompt`, checked and scored, counted in the response stats:
        (candidates, index kept or None, rejection reason, model), or None when the request was
        refused. The first turn (`_respond`) and every later turn of a conversation come here."""
        out = await self.request("respond", prompt, **sampling)
        if out is None:
            return None
        cands = [new_candidate(t, f) for t, f in zip(out.texts, out.finish_reasons)]
        best, reason = await self.scorer(user_text, instruction, inp, cands, constraints)
        self.candidates += len(cands)
        self.passing += sum(1 for c in cands if not c["reasons"])
        if constraints:
            self.constrained_candidates += len(cands)
            self.constrained_passing += sum(1 for c in cands if "constraint_failed" not in c["reasons"])
        return cands, best, reason, out.model

    # -- shared ---------------------------------------------------------------------------------

    def admit(self, instruction: str, prompt_own: tuple[set[str], str] = (frozenset(), "")
              ) -> tuple[str, list] | None:
        """Instruction filters, the prompt-echo check, decontamination, then novelty: (new
        instruction id, the most similar pool items) if it passes -- it is then in the pool and in
        progress."""
        reason, extra = self.instr_filter(instruction), {}
        echoed = sorted(content_words(instruction) & prompt_own[0])
        if reason is None and (len(echoed) >= ECHO_WORDS or copies_shown(instruction, prompt_own[1])):
            reason, extra = "echoes_prompt", {"prompt_words": echoed}
        if reason is None and self.decontam is not None:
            reason = self.decontam.check(instruction)
        if reason:
            self.reject({"instruction": instruction, **extra}, reason)
            return None
        novel, similar = self.pool.check_and_add(instruction, k=5)
        similar = [{"instruction": t, "rouge_l": round(s, 4)} for t, s in similar]
        if not novel:
            self.reject({"instruction": instruction, "most_similar": similar[:1]}, "not_novel")
            return None
        iid = uuid.uuid4().hex[:12]
        self.machine.append((iid, instruction))
        self.admitted += 1
        self.in_progress += 1
        return iid, similar

    def drop(self, iid: str, instruction: str, reason: str, extra: dict | None = None) -> None:
        """An admitted instruction that yields no record; it stays in the novelty pool (the row
        says so, for resuming)."""
        self.in_progress -= 1
        self.finished += 1
        self.reject({"instruction_id": iid, "instruction": instruction, **(extra or {}), "in_pool": True}, reason)

    def _accept(self, iid: str, instruction: str, base: str, instances: list[dict], is_cls: bool, similar: list,
                prov: dict, out: Completion, constraints: list[dict]) -> None:
        if self.done:
            return self.drop(iid, base, "over_target")
        self.in_progress -= 1
        self.finished += 1
        common = {
            "instruction_id": iid, "base_instruction": base, "constraints": constraints,
            "is_classification": is_cls, "num_instances": len(instances),
            "mode": self.cfg.mode, "templates": prov["templates"],
            "teacher": {"model": out.model, "endpoint": out.endpoint, "api": self.cfg.api,
                        "structured": self.structured},
            "sampling": self.params, "examples": prov["examples"], "most_similar": similar,
            "finish_reason": out.finish_reasons[0], "prompt_tokens": out.prompt_tokens,
            "completion_tokens": out.completion_tokens, "created_at": now_iso(), "run_id": self.run.run_id,
            **{k: prov[k] for k in ("system_prompt", "persona") if prov.get(k)},  # what steered a magpie request
        }
        records: list[Record] = [{"id": f"{iid}-{i}", "instruction": instruction, "input": inst["input"],
                    "output": inst["output"], "instance_index": i, **common,
                    **{k: inst[k] for k in ("scores", "selected", "candidates", "response", "num_turns", "messages",
                                            "turns") if k in inst}}
                   for i, inst in enumerate(instances)]
        with bookkeeping():  # a SIGTERM meanwhile is raised after the group, its count and its usage line
            self.run.write_group(records)
            self.turn_counts.update(r.get("num_turns", 1) for r in records)
            self.flush_usage()
            self.kept += 1
        if self.progress:
            self.progress(self)

    def reject_counts(self, reasons: dict[str, int], instruction: str) -> None:
        for reason, count in reasons.items():
            for _ in range(count):
                self.reject({"instruction": instruction, "level": "instance"}, reason)

    def reject(self, rec: dict, reason: str) -> None:
        with bookkeeping():
            self.rejections[reason] += 1
            self.run.write_rejected({**rec, "reason": reason, "created_at": now_iso()})
        if self.progress:
            self.progress(self)

    @staticmethod
    def tmpl_info(t: Template) -> dict:
        return {"name": t.name, "sha256": t.sha256}

    def _usage_now(self) -> dict:
        u = self.client.usage
        return {"requests": self.requests, "retries": u.retries, "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens, "elapsed_s": time.monotonic(),
                "by_stage": stage_usage(u.by_stage)}

    def flush_usage(self) -> None:
        """Append what was spent since the last line to usage.jsonl (see runs.py)."""
        now = self._usage_now()
        delta = {k: now[k] - self._usage_mark[k] for k in now if k != "by_stage"}
        delta["by_stage"] = stage_usage(now["by_stage"], self._usage_mark["by_stage"])
        delta["elapsed_s"] = round(delta["elapsed_s"], 2)
        with bookkeeping():
            self._usage_mark = now
            self.run.write_usage(delta)

    def stats(self) -> dict:
        elapsed = time.monotonic() - self.started
        u = self.client.usage
        completion = u.completion_tokens - self.tokens_at_start[1]
        prev = self.run.previous_usage
        attempts = self.admitted + self.rejections.get("not_novel", 0)
        return {
            "run_id": self.run.run_id, "mode": self.cfg.mode, "target": self.cfg.num_instructions,
            "kept_instructions": self.kept,
            "records": sum(1 for _ in open(self.run.data_path, encoding="utf-8")),
            "rejections": dict(self.rejections.most_common()),
            "parse_failures": self.rejections.get("parse_error", 0),
            # share of this session's instructions that copied the pool (ROUGE-L above threshold)
            "copy_rate": round(self.rejections.get("not_novel", 0) / attempts, 4) if attempts else None,
            "responses": {"candidates": self.candidates, "passing": self.passing,
                          "constrained_candidates": self.constrained_candidates,
                          "constraint_pass_rate": round(self.constrained_passing / self.constrained_candidates, 4)
                          if self.constrained_candidates else None},
            **({"conversations": {"turns_requested": "-".join(map(str, sorted(set(self.turns)))),
                                  "records_by_assistant_turns": {str(k): v for k, v in sorted(self.turn_counts.items())}}}
               if self.turns[1] > 1 else {}),
            "context": {"max_model_len": self.budget.max_model_len, "exact_token_counts": self.budget.exact},
            "requests": prev.get("requests", 0) + self.requests,
            "retries": prev.get("retries", 0) + u.retries,
            "prompt_tokens": prev.get("prompt_tokens", 0) + u.prompt_tokens - self.tokens_at_start[0],
            "completion_tokens": prev.get("completion_tokens", 0) + completion,
            "elapsed_s": round(prev.get("elapsed_s", 0) + elapsed, 2),
            # which stage spent the teacher's tokens, over the whole run (judge: the rating judge when
            # it is the teacher's client; a judge on its own server counts there)
            "usage_by_stage": stage_usage(u.by_stage, self._stages_at_start, prev.get("by_stage")),
            "session_completion_tokens_per_s": round(completion / elapsed, 2) if elapsed else 0.0,
            "structured": self.structured,
        }
