"""How each mode writes instructions, as functions of the running `Pipeline` `p` (the way
generator/conversation.py grows conversations): one *unit* is one request and what its reply
yields.

- `alpaca_unit`: one request for a batch of complete tasks (instruction, input, output);
- `self_instruct_unit`: bootstrap from seed + machine examples, the novelty check on the spot
  (the paper's code), then per instruction classification identification and instances
  (output-first for classification, input-first otherwise);
- `magpie_unit`: the chat template's opening of a user turn, the teacher writes the request; a
  request its own writer finds unlikely (--min-request-logprob) is dropped.

Every instruction that passes goes to `p.finish` (responses, scoring, the record).
"""

from __future__ import annotations

import asyncio

from generator.client import BadRequest
from generator.filters import clean_instances, squash
from generator.scoring import content_words


async def alpaca_unit(p) -> None:
    steer = p.next_steer()
    k = min(p.cfg.examples_per_prompt, len(p.seeds))
    examples = p.rng.sample(p.seeds, k)
    shown = [{"id": s.id, "instruction": s.instruction, **(s.instances[0] if s.instances else
                                                              {"input": "", "output": ""})} for s in examples]
    asked = await p.unit_request(
        "alpaca", {"examples": shown, "num_tasks": p.cfg.tasks_per_prompt, "start": k + 1,
                   "persona": steer["persona"]},
        [f"\n{k + p.cfg.tasks_per_prompt + 1}. Instruction"])
    if asked is None:
        return
    out, parsed, tmpl, variables = asked
    shown_ids = {e["id"] for e in variables["examples"]}
    prov = {"templates": {"alpaca": p.tmpl_info(tmpl)},
            "examples": {"seed": [s.id for s in examples if s.id in shown_ids], "machine": []}, **steer}
    jobs = []
    for task in parsed.items:
        if p.kept + p.in_progress >= p.cfg.num_instructions:
            break
        admitted = p.admit(task["instruction"])
        if admitted is None:
            continue
        iid, novel = admitted
        kept, reasons, task_reason = clean_instances([task], p.instr_filter.cfg)
        p.reject_counts(reasons, task["instruction"])
        if task_reason:
            p.drop(iid, task["instruction"], task_reason, {"instances": [task]})
            continue
        jobs.append(p.finish(iid, task["instruction"], kept, False, novel, prov, out))
    await asyncio.gather(*jobs)


async def self_instruct_unit(p) -> None:
    cfg = p.cfg
    steer = p.next_steer()
    n_machine = min(cfg.machine_examples, len(p.machine))
    # 6 seeds + 2 machine instructions once the machine pool exists, all 8 from seeds before
    n_seed = min(cfg.seed_examples + cfg.machine_examples - n_machine, len(p.seeds))
    seeds = p.rng.sample(p.seeds, n_seed)
    machine = p.rng.sample(p.machine, n_machine)
    shown = [{"id": s.id, "instruction": s.instruction} for s in seeds]
    shown += [{"id": mid, "instruction": text} for mid, text in machine]
    p.rng.shuffle(shown)  # the paper mixes seed and machine examples in one list
    n = len(shown)
    asked = await p.unit_request(
        "bootstrap", {"examples": shown, "num_instructions": cfg.instructions_per_prompt, "start": n + 1,
                      "persona": steer["persona"]},
        [f"\n{n + cfg.instructions_per_prompt + 1}.", "\n\n"])
    if asked is None:
        return
    out, parsed, tmpl, variables = asked
    shown_ids = {e["id"] for e in variables["examples"]}
    prov = {"templates": {"bootstrap": p.tmpl_info(tmpl)},
            "examples": {"seed": [s.id for s in seeds if s.id in shown_ids],
                         "machine": [mid for mid, _ in machine if mid in shown_ids]}, **steer}
    jobs, echo = [], _prompt_own(p, "bootstrap", variables)
    for text in parsed.items:
        if p.kept + p.in_progress >= cfg.num_instructions:
            break  # enough candidates are already on their way
        admitted = p.admit(text, echo)
        if admitted is not None:
            jobs.append(_complete_task(p, text, *admitted, prov))
    await asyncio.gather(*jobs)


async def magpie_unit(p) -> None:
    sampling = p.params
    steer = p.next_steer()
    prompt, stops = p.magpie_prompts[steer["system_prompt"]]
    try:
        out = await p.request_raw("magpie", prompt, n=p.magpie_n, max_tokens=sampling["max_tokens"],
                                  temperature=sampling["temperature"], top_p=sampling["top_p"], stop=stops,
                                  **p.judged())
    finally:
        p.awaiting -= 1
    if out is None:
        return
    p.replies += 1
    prov = {"templates": {}, "examples": {"seed": [], "machine": []}, **steer}
    jobs = []
    for i, (text, finish) in enumerate(zip(out.texts, out.finish_reasons)):
        if p.kept + p.in_progress >= p.cfg.num_instructions:
            break
        text = text.strip()
        if finish == "length":
            p.reject({"stage": "magpie", "raw": text[-300:]}, "cut_by_length_limit")
            continue
        mean = out.mean_logprob(i)  # None from a server that sends no logprobs: nothing to judge by
        if mean is not None and mean < p.cfg.min_request_logprob:
            p.reject({"stage": "magpie", "instruction": text, "mean_logprob": round(mean, 3)}, "unlikely_request")
            continue
        admitted = p.admit(text)
        if admitted is not None:
            jobs.append(p.finish(admitted[0], text, [{"input": "", "output": ""}], False, admitted[1], prov, out))
    await asyncio.gather(*jobs)


async def _complete_task(p, instruction: str, iid: str, novel: list, prov: dict) -> None:
    """Self-instruct's stages 2 and 3 for one admitted instruction: classification, then its
    instances (output-first for classification); dropped with a reason when either fails."""
    sampling = p.params
    is_cls = await _classify(p, instruction)
    if is_cls is None:
        return p.drop(iid, instruction, "classify_failed")
    ctmpl = p.templates["classify"]
    stage = "instances_output_first" if is_cls else "instances_input_first"
    asked = await p.ask(
        stage, {"instruction": instruction, "max_instances": p.cfg.max_instances},
        sampling["instance_max_tokens"], stop=["\nTask:", "Task:"], temperature=sampling["instance_temperature"],
        top_p=sampling["instance_top_p"], presence_penalty=sampling.get("instance_presence_penalty", 0.0))
    if asked is None:
        return p.drop(iid, instruction, "instances_failed")
    out, parsed, itmpl, variables = asked
    items = parsed.items[: p.cfg.max_instances]
    shots = p.prompt_text(stage, variables).replace(instruction, " ")
    kept, reasons, task_reason = clean_instances(items, p.instr_filter.cfg, shots)
    p.reject_counts(reasons, instruction)
    if task_reason:
        return p.drop(iid, instruction, task_reason, {"instances": items})
    prov = {**prov, "templates": {**prov["templates"], "classify": p.tmpl_info(ctmpl),
                                  stage: p.tmpl_info(itmpl)}}
    await p.finish(iid, instruction, kept, is_cls, novel, prov, out)


async def _classify(p, instruction: str) -> bool | None:
    """Stage 2, a Yes or a No out of any teacher (generator.classify): on vLLM the completion
    form under a Yes/No choice constraint -- measured best on the seeds' own labels for a
    135M teacher (0.80; the chat form gave no signal) --, elsewhere --api's form with logprobs.
    An unreadable answer is a parse failure and means "not classification", as in the paper.
    None only when the request itself failed."""
    from generator.classify import classify_is_classification

    api = "completion" if p.server_is_vllm else p.cfg.api
    prompt = p.templates["classify"].render(instruction=instruction, structured=False)
    prompt = prompt.completion if api == "completion" else prompt.messages()
    if p.budget.fit(prompt, 3, 1) is None:
        p.reject({"stage": "classify", "instruction": instruction}, "prompt_too_long")
        return None
    p.requests += 1
    try:
        verdict = await classify_is_classification(p.client, prompt, api, p.server_is_vllm)
    except BadRequest as e:
        p.reject({"stage": "classify", "status": e.status, "message": e.detail}, "bad_request")
        return None
    if verdict is None:
        p.reject({"stage": "classify", "instruction": instruction}, "parse_error")
    return bool(verdict)


def _prompt_own(p, stage: str, variables: dict) -> tuple[set[str], str]:
    """What the prompt says itself, apart from its examples: (its own words: content words that
    neither the examples, the seeds nor the persona use -- "tasks", "numbered", "reword",
    "classification" --, its text without the examples, squashed). A small teacher turns them into tasks
    ("Create a JSON document with 8 tasks numbered 9 to 16.", "Answer with JSON: {")."""
    text = p.prompt_text(stage, variables)
    shown = [str(v) for e in variables.get("examples", []) for k, v in e.items() if k != "id"]
    for example in shown:
        text = text.replace(example, " ")
    words = content_words(text) - content_words(" ".join(shown) + " " + (variables.get("persona") or ""))
    return words - p.seed_words, squash(text)  # squashed once, compared per instruction
