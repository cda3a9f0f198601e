"""The verifiable instruction-following eval, the headline of `sprout eval`: read the set of
prompts whose constraints a program checks (generator.verifiers), check each model's answers
against them, and summarize as IFEval does -- prompt- and constraint-level, strict and loose --
with a paired bootstrap interval for student minus base.

Apart from trainer.evaluate because none of it needs a server or a model: it works on answers
already collected, so the demo's SFT-vs-DPO comparison (trainer.demo.three_way) and the renderers
(trainer.eval_render, trainer.report_train_eval) use it without importing the eval run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from generator.errors import UserError
from generator.rows import read_rows

VERIFIABLE_KEYS = ("prompt_strict", "constraint_strict", "prompt_loose", "constraint_loose")
VERIFIABLE_LABELS = {"prompt_strict": "prompt-level, strict", "constraint_strict": "constraint-level, strict",
                     "prompt_loose": "prompt-level, loose", "constraint_loose": "constraint-level, loose"}


def verifiable_set_path(value: str | None) -> Path | None:
    """The verifiable set to use: the given file, None for "none"/"", else the shipped one."""
    from generator.resources import data_dir

    if value is not None:
        return None if value.strip().lower() in ("", "none") else Path(value)
    shipped = data_dir("seeds") / "verifiable_eval.jsonl"
    if not shipped.is_file():  # an installation older than the set: say so, and evaluate the rest
        print(f"warning: {shipped} is missing; the verifiable instruction-following eval is skipped",
              file=sys.stderr)
        return None
    return shipped


def load_verifiable_set(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows {id, instruction, base_instruction, constraints: [{type, params, text}]} as eval items."""
    from generator import verifiers

    items = []
    for n, (where, row) in enumerate(read_rows(path), 1):
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected an object with 'instruction' and 'constraints'")
        instruction = row.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise UserError(f"{where}: field 'instruction' must be a non-empty string")
        constraints = row.get("constraints")
        if not isinstance(constraints, list) or not constraints:
            raise UserError(f"{where}: field 'constraints' must be a non-empty list of {{type, params, text}}")
        for k, c in enumerate(constraints):
            field = f"{where}: field 'constraints[{k}]"
            if not isinstance(c, dict) or c.get("type") not in verifiers.TYPES:
                got = c.get("type") if isinstance(c, dict) else c
                raise UserError(f"{field}.type': unknown constraint type {got!r}; this Sprout knows "
                                f"{', '.join(sorted(verifiers.TYPES))}")
            try:  # a dry run: a missing or mistyped parameter fails here, naming the row
                verifiers.check("x", c)
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise UserError(f"{field}.params': not valid for {c['type']} ({type(err).__name__}: {err})") from None
        items.append({"id": str(row.get("id", n)), "instruction": instruction,
                      "base_instruction": row.get("base_instruction") or "", "constraints": constraints,
                      "messages": [{"role": "user", "content": instruction}]})
    if not items:
        raise UserError(f"{path}: no prompts in the verifiable set")
    return items[:limit] if limit else items


def score_verifiable(items: list[dict], answers: dict[str, list[str]]) -> list[dict]:
    """Per prompt: each model's answer and which of its constraints the answer met, strict and loose.
    `answers` maps a model ("base", "student") to its answers in item order."""
    from generator.verifiers import check_all

    rows = []
    for k, it in enumerate(items):
        got = {m: a[k] for m, a in answers.items()}
        rows.append({"id": it["id"], "instruction": it["instruction"], "base_instruction": it["base_instruction"],
                     "constraints": it["constraints"], "answers": got,
                     "strict": {m: check_all(a, it["constraints"]) for m, a in got.items()},
                     "loose": {m: check_all(a, it["constraints"], loose=True) for m, a in got.items()}})
    return rows


def summarize_verifiable(rows: list[dict], compare: tuple[str, str] = ("base", "student")) -> dict:
    """Accuracies per model, and `compare[1]` minus `compare[0]` (student minus base) with paired
    bootstrap 95% intervals.

    prompt-level: share of prompts whose answer met every constraint; constraint-level: share of
    all constraints met, pooled over prompts (a prompt with three constraints counts three times).
    Both resample prompts, so a prompt's constraints move together."""
    from trainer.stats import paired_bootstrap

    models = list(rows[0]["answers"]) if rows else []
    counts = [len(r["constraints"]) for r in rows]
    out: dict = {"items": len(rows), "constraints": sum(counts)}

    def per_prompt(model: str, mode: str, level: str) -> list[int]:
        passes = [r[mode][model] for r in rows]
        return [int(all(p)) for p in passes] if level == "prompt" else [sum(p) for p in passes]

    for m in models:
        out[m] = {f"{level}_{mode}": round(sum(per_prompt(m, mode, level)) / (len(rows) if level == "prompt"
                                                                           else sum(counts)), 4)
                  for level, mode in (k.split("_") for k in VERIFIABLE_KEYS)}
    if set(compare) <= set(models):
        out["diff"] = {}
        for key in VERIFIABLE_KEYS:
            level, mode = key.split("_")
            out["diff"][key] = paired_bootstrap(per_prompt(compare[0], mode, level), per_prompt(compare[1], mode, level),
                                                None if level == "prompt" else counts)
    by_type: dict[str, dict] = {}
    for r in rows:
        for k, c in enumerate(r["constraints"]):
            t = by_type.setdefault(c["type"], {"constraints": 0, **{m: 0 for m in models}})
            t["constraints"] += 1
            for m in models:
                t[m] += int(r["strict"][m][k])
    out["by_type_strict"] = {name: {"constraints": t["constraints"],
                                    **{m: round(t[m] / t["constraints"], 4) for m in models}}
                             for name, t in sorted(by_type.items())}
    return out
