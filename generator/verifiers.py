"""Verifiable constraints: instructions whose answers a program can check (IFEval-style).

A constraint type knows three things, kept together here:
- how to pick its parameters (`sample`),
- how to say it, in two disjoint sets of phrasings: "train" ones that `sprout generate
  --constraints P` appends to generated instructions, and "eval" ones used only by the held-out
  verifiable eval set -- so a student that improves on the eval set learned the constraint, not
  one wording of it;
- how to check an answer (`check`), strictly, and loosely (IFEval's loose mode: also accept the
  answer with markdown emphasis removed, or its first / last line dropped).

A constraint travels as a plain dict {"type", "params", "text"} in records and eval sets.

Public API (used by the pipeline, `sprout score`, `sprout eval`):
    TYPES                                   registry: name -> ConstraintType
    sample_constraints(rng, k, phrasing)    k compatible constraints, each a dict
    augment(instruction, constraints)       the instruction with the constraint texts appended
    check(response, constraint, loose=False) -> bool
    check_all(response, constraints, loose=False) -> list[bool]
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ConstraintType:
    name: str
    sample: Callable[[random.Random], dict]  # rng -> params
    check: Callable[[str, dict], bool]  # (response, params) -> passed?
    train: tuple[str, ...]  # phrasings, str.format(**params)
    eval: tuple[str, ...]  # disjoint phrasings for the held-out eval set
    conflicts: frozenset[str] = field(default_factory=frozenset)  # types that cannot be combined with it


def _words(text: str) -> list[str]:
    return re.findall(r"\b\w+\b", text)


TYPES: dict[str, ConstraintType] = {}


def _register(t: ConstraintType) -> None:
    TYPES[t.name] = t


_register(ConstraintType(
    "no_commas", lambda rng: {}, lambda r, p: "," not in r,
    train=("Do not use any commas in your answer.", "Write your whole answer without a single comma."),
    eval=("Avoid commas entirely in the response.",)))
_register(ConstraintType(
    "lowercase", lambda rng: {}, lambda r, p: r == r.lower() and any(c.isalpha() for c in r),
    train=("Write your entire answer in lowercase letters only.",),
    eval=("Use no capital letters anywhere in the response.",),
    conflicts=frozenset({"uppercase"})))
_register(ConstraintType(
    "max_words", lambda rng: {"n": rng.choice([20, 30, 40, 50, 80])}, lambda r, p: 0 < len(_words(r)) <= p["n"],
    train=("Answer in at most {n} words.", "Keep your answer under {n} words."),
    eval=("The response must not exceed {n} words.",),
    conflicts=frozenset({"min_words"})))


def _strip_markdown(text: str) -> str:
    return text.replace("*", "")


def _loose_variants(response: str) -> list[str]:
    lines = response.split("\n")
    base = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [v for b in base for v in (b, _strip_markdown(b)) if v]


def check(response: str, constraint: dict, loose: bool = False) -> bool:
    t = TYPES[constraint["type"]]
    params = constraint.get("params") or {}
    candidates = _loose_variants(response) if loose else [response]
    return any(t.check(c, params) for c in candidates)


def check_all(response: str, constraints: list[dict], loose: bool = False) -> list[bool]:
    return [check(response, c, loose) for c in constraints]


def sample_constraints(rng: random.Random, k: int = 1, phrasing: str = "train") -> list[dict]:
    """k mutually compatible constraints with parameters and a phrasing from the given set."""
    chosen: list[ConstraintType] = []
    names = sorted(TYPES)
    rng.shuffle(names)
    for name in names:
        t = TYPES[name]
        if any(name in c.conflicts or c.name in t.conflicts for c in chosen):
            continue
        chosen.append(t)
        if len(chosen) == k:
            break
    out = []
    for t in chosen:
        params = t.sample(rng)
        text = rng.choice(getattr(t, phrasing)).format(**params)
        out.append({"type": t.name, "params": params, "text": text})
    return out


def augment(instruction: str, constraints: list[dict]) -> str:
    """The instruction followed by each constraint's sentence."""
    return " ".join([instruction.rstrip()] + [c["text"] for c in constraints])
