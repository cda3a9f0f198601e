"""Scoring candidate responses and keeping the best one (best-of-N rejection sampling).

A weak teacher's average answer is poor, but among several samples one is often right; a
program that can tell which one turns a weak teacher into usable data (STaR, RFT, Tulu 3's
verifiable rewards). Every candidate is kept in the record with its scores, so scoring can be
redone (`sprout score`) without asking the teacher again.

Scorers, each writing `candidate["scores"][name]` and appending failure reasons:
- checks   (always on) empty answer, cut by the length limit, a degenerate loop, an echo of the
           prompt, a deflection instead of an answer ("I'm not sure", "Please provide...").
           These are not matters of taste: such an answer is never kept.
- consensus  (always on, with 2+ samples) each answer's mean ROUGE-L F against the request's
           other samples: minimum-Bayes-risk selection. Where a weak teacher's samples disagree,
           the one closest to the rest is the likeliest to be right; an outlier (a wrong fact, a
           tangent, "Sure.") is far from all of them. Needs no judge and no log-probs.
- relevance  (always on) share of the request's content words the answer takes up; shown, and
           what selection goes by when there is a single sample.
- verifiers  the instruction's verifiable constraints (generator.verifiers): score = share met;
           a candidate that misses any is not kept.
- judge    an LLM rates helpfulness, correctness and instruction following 1-10
           (prompts/rate.jinja); `min_score` drops a chosen answer rated lower.
- reward   a local Hugging Face sequence-classification reward model (its first logit).

Selection: among candidates with no failure reason, the highest combined score (mean of the
consensus -- or the relevance with one sample --, the judge's score / 10 and the reward's
sigmoid, where present); ties go to the lowest index, so the choice is deterministic.
Why consensus and not relevance (benchmarks/RESULTS.md, "Choosing among sampled answers"): on
195 seed requests with human answers, 6 samples each from the 135M teacher, the most relevant
passing answer was further from the human one than a random passing answer (ROUGE-L F 0.132
against 0.143) -- relevance rewards long answers that repeat the request's words --, the
consensus answer nearer (0.183; paired gain over relevance +0.050, 95% CI [+0.033, +0.071]).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from dataclasses import dataclass

from generator import verifiers
from generator.config import setting
from generator.errors import UserError
from generator.novelty import TOKENIZERS, rouge_l

SCORERS = ("verifiers", "judge", "reward")


@dataclass
class ScoreConfig:
    # the checks (empty, cut, degenerate, deflecting, off-topic...) always run; these come on top
    score: list[str] = setting(help="scorers besides the always-on checks, comma-separated: verifiers, judge, reward",
                               factory=lambda: ["verifiers"], repeat="csv", group="scoring")
    min_score: float | None = setting(None, "drop an answer the judge rates below this (1-10; needs judge)",
                                      group="scoring")
    judge_url: str | None = setting(None, "OpenAI-compatible server of the rating judge", group="scoring",
                                    shown="the teacher")
    judge_model: str | None = setting(None, "model name on the judge server", shown="the first it serves",
                                      group="scoring")
    judge_template: str | None = setting(None, "Jinja rating prompt", shown="prompts/rate.jinja", group="scoring")
    reward_model: str | None = setting(None, "HF folder of a sequence-classification reward model (with --score "
                                       "...,reward)", group="scoring")
    tokenizer: str = setting("rouge", "ROUGE-L words for novelty, decontamination and the answers' consensus: "
                             "rouge (rouge-score's, English) or unicode (words of any script, each CJK character "
                             "a word)", choices=TOKENIZERS, group="scoring")

    def validate(self) -> None:
        unknown = [s for s in self.score if s not in SCORERS]
        if unknown:
            raise UserError(f"--score {','.join(unknown)}: choose from {', '.join(SCORERS)}")
        if "reward" in self.score and not self.reward_model:
            raise UserError("--score reward needs --reward-model PATH (a sequence-classification model folder)")
        if self.min_score is not None and "judge" not in self.score:
            raise UserError("--min-score filters on the judge's rating: add judge to --score")
        if self.min_score is not None and not 1 <= self.min_score <= 10:
            raise UserError(f"--min-score {self.min_score}: the judge rates 1-10")


def new_candidate(text: str, finish_reason: str = "stop") -> dict:
    return {"text": text.strip(), "finish_reason": finish_reason, "scores": {}, "reasons": []}


# -- checks that no answer is kept without ----------------------------------------------------

# Sentence ends and line breaks: a looping small teacher varies its line breaks, not its sentences.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _degenerate(text: str) -> bool:
    """A loop: the same line three or more times, the same sentence of 4+ words three or more times
    anywhere, or few distinct word 4-grams in a long answer. The sentence rule is what catches the
    135M teacher's loops that wander between lines ("I will make your meal. I am here to help you."
    four times among other sentences); on the 471 human-written outputs of seeds/ it flags none."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and max(lines.count(ln) for ln in set(lines)) >= 3 and len(set(lines)) < len(lines) / 2:
        return True
    sentences = [" ".join(re.findall(r"\w+", s.lower())) for s in _SENTENCE_END.split(text)]
    counts = Counter(s for s in sentences if s.count(" ") >= 3)
    if counts and max(counts.values()) >= 3:
        return True
    words = text.lower().split()
    if len(words) >= 40:
        grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
        return len(set(grams)) / len(grams) < 0.5
    return False


# An answer that opens like this answers nothing: a small teacher's favourite way to meet a
# length or format constraint.
_DEFLECT = re.compile(r"^\W*((no|unfortunately),?\s+)?"
                      r"(i'?m (not sure|sorry|unable|not able)|i am (not sure|sorry|unable)|"
                      r"i (cannot|can't|can not|don't know|do not know)|as an ai\b|sorry\b|"
                      r"please provide|could you (please )?(provide|clarify|share|specify))", re.I)
_STOP = frozenset("""a an the and or but if then than that this these those there their them they you your
yours with without from into onto about above below for of on in at to by as is are was were be been
being have has had do does did can could should would will shall may might must not no nor so such
what which who whom whose when where why how all any each few more most other some own same very just
also only please me my mine we our ours it its i he she his her him write give make tell using use""".split())


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2 and w not in _STOP}


def relevance(request: str, answer: str) -> float:
    """Share of the request's content words that the answer uses (1.0 when it has none)."""
    want = content_words(request)
    return round(len(want & content_words(answer)) / len(want), 4) if want else 1.0


def consensus(texts: list[str], tokenizer: str = "rouge") -> list[float | None]:
    """Each text's mean ROUGE-L F against the other texts (None for all when there are fewer
    than two): the expected agreement with an answer drawn from the teacher -- minimum Bayes
    risk with ROUGE-L as the utility. Every sample counts, failed ones too: they are draws from
    the same distribution, and a cut or looping answer still says what the teacher believes."""
    n = len(texts)
    if n < 2:
        return [None] * n
    sums = [0.0] * n
    for i in range(n):
        for j in range(i + 1, n):
            f = rouge_l(texts[i], texts[j], tokenizer=tokenizer)
            sums[i] += f
            sums[j] += f
    return [round(x / (n - 1), 4) for x in sums]


def _echoes(text: str, request: str) -> bool:
    """The answer is the request again (ROUGE-L F >= 0.8 against it): a small model's way of
    'answering' a question with a question."""
    return rouge_l(text, request) >= 0.8


def check_reasons(text: str, finish_reason: str, prompt: str) -> list[str]:
    """Why this answer may never be kept; `prompt` is the request without constraint sentences."""
    if not text.strip():
        return ["empty_response"]
    reasons = []
    if finish_reason == "length":
        reasons.append("cut_by_length_limit")
    if _degenerate(text):
        reasons.append("repetitive_response")
    if _echoes(text, prompt):
        reasons.append("echoes_prompt")
    if _DEFLECT.match(text.strip()):
        reasons.append("deflects")
    return reasons


# -- the scorers --------------------------------------------------------------------------------

def score_verifiers(cand: dict, constraints: list[dict]) -> None:
    if not constraints:
        return
    passed = verifiers.check_all(cand["text"], constraints)
    cand["scores"]["verifiers"] = round(sum(passed) / len(passed), 4)
    cand["constraints_passed"] = passed
    if not all(passed):
        cand["reasons"].append("constraint_failed")


class Judge:
    """Rates one answer 1-10 through any OpenAI-compatible chat model, under a JSON schema when
    the server is vLLM. An unreadable rating is recorded as None, never as a low score."""

    def __init__(self, client, structured: bool, template: str | None = None):
        from pathlib import Path

        from generator.resources import data_dir
        from generator.templates import Template, check_parser, make_env

        path = Path(template) if template else data_dir("prompts") / "rate.jinja"
        if not path.is_file():
            raise UserError(f"--judge-template {path}: file not found")
        self.tmpl = check_parser(Template(path, make_env(path.parent)), "rate")
        self.client, self.structured = client, structured
        self.requests = 0

    async def rate(self, instruction: str, inp: str, answer: str) -> float | None:
        from generator.parsing import PARSERS, response_format

        prompt = self.tmpl.render(instruction=instruction, input=inp, response=answer, structured=self.structured)
        kwargs = {"max_tokens": 24, "temperature": 0.0}
        if self.structured:
            kwargs["response_format"] = response_format(self.tmpl.parser)
        self.requests += 1
        out = await self.client.chat(prompt.messages(), stage="judge", **kwargs)
        parsed = PARSERS[self.tmpl.parser](out.texts[0], out.finish_reasons[0], self.structured)
        return float(parsed.items[0]) if parsed.items else None


class RewardModel:
    """A local sequence-classification reward model; scores run in a worker thread so the event
    loop keeps feeding the teacher."""

    def __init__(self, path: str):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        except (OSError, ValueError) as e:
            raise UserError(f"--reward-model {path}: cannot load a sequence-classification model ({e})") from None
        self._lock = asyncio.Lock()  # one forward pass at a time: torch already uses every core

    def _text(self, prompt: str, answer: str) -> str:
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(msgs, tokenize=False)
        return f"{prompt}\n\n{answer}"

    def score_batch(self, prompt: str, answers: list[str]) -> list[float]:
        import torch

        enc = self.tok([self._text(prompt, a) for a in answers], return_tensors="pt", padding=True,
                       truncation=True, max_length=2048)
        with torch.no_grad():
            logits = self.model(**enc).logits
        return [round(float(x), 4) for x in logits[:, 0]]

    async def score(self, prompt: str, answers: list[str]) -> list[float]:
        async with self._lock:
            return await asyncio.to_thread(self.score_batch, prompt, answers)


# -- scoring a set of candidates and choosing -----------------------------------------------------

def combined(cand: dict) -> float:
    """Mean of the candidate's scores on a 0-1 scale; the consensus stands for the relevance
    where both are present (records written before it have only the relevance)."""
    first = cand["scores"].get("consensus")
    first = cand["scores"].get("relevance") if first is None else first
    parts = [first] if first is not None else []
    if cand["scores"].get("judge") is not None:
        parts.append(cand["scores"]["judge"] / 10)
    if cand["scores"].get("reward") is not None:
        parts.append(1 / (1 + math.exp(-cand["scores"]["reward"])))
    return sum(parts) / len(parts) if parts else 0.0


def select(cands: list[dict]) -> int | None:
    """Index of the best candidate without a failure reason (ties: lowest index), or None."""
    ok = [i for i, c in enumerate(cands) if not c["reasons"]]
    return max(ok, key=lambda i: (combined(cands[i]), -i)) if ok else None


class Scorer:
    """Scores candidates with the configured scorers and selects one: `await scorer(...)`."""

    def __init__(self, cfg: ScoreConfig, judge: Judge | None = None, reward: RewardModel | None = None):
        cfg.validate()
        self.cfg, self.judge, self.reward = cfg, judge, reward

    async def __call__(self, prompt: str, instruction: str, inp: str, cands: list[dict],
                       constraints: list[dict]) -> tuple[int | None, str | None]:
        """(index of the kept candidate or None, the rejection reason when none is kept)."""
        request = prompt
        for c in constraints:  # relevance is to the request, not to the constraint sentences
            request = request.replace(c.get("text", ""), " ")
        for c in cands:
            c["reasons"] = check_reasons(c["text"], c["finish_reason"], request)
            if inp.strip() and " ".join(c["text"].split()) == " ".join(inp.split()):
                c["reasons"].append("input_equals_output")  # the paper's instance rule, for answers too
            c["scores"]["relevance"] = relevance(request, c["text"])
            if "verifiers" in self.cfg.score:
                score_verifiers(c, constraints)
        for c, agree in zip(cands, consensus([c["text"] for c in cands], self.cfg.tokenizer)):
            if agree is not None:
                c["scores"]["consensus"] = agree
        alive = [c for c in cands if not c["reasons"]]
        if self.judge and alive:
            ratings = await asyncio.gather(*[self.judge.rate(instruction, inp, c["text"]) for c in alive])
            for c, r in zip(alive, ratings):
                c["scores"]["judge"] = r
        if self.reward and alive:
            for c, r in zip(alive, await self.reward.score(prompt, [c["text"] for c in alive])):
                c["scores"]["reward"] = r
        best = select(cands)
        if best is None:
            return None, _why_none(cands)
        if self.cfg.min_score is not None:
            rating = cands[best]["scores"].get("judge")
            if rating is None or rating < self.cfg.min_score:
                return None, "low_judge_score"
        return best, None


def _why_none(cands: list[dict]) -> str:
    """One reason for a set with no keepable candidate: the most common first reason."""
    firsts = [c["reasons"][0] for c in cands if c["reasons"]]
    return max(sorted(set(firsts)), key=firsts.count) if firsts else "no_candidate"


def make_scorer(cfg: ScoreConfig, teacher_client=None, structured: bool = False) -> Scorer:
    """A Scorer with its judge (on `teacher_client` unless cfg.judge_url names another server)
    and reward model loaded. The caller closes a judge client it did not pass in (`.own_client`)."""
    cfg.validate()
    judge = reward = None
    if "judge" in cfg.score:
        client = teacher_client
        if cfg.judge_url:
            from generator.client import TeacherClient, api_key_from_env

            client = TeacherClient(cfg.judge_url, model=cfg.judge_model, api_key=api_key_from_env(None, cfg.judge_url))
        if client is None:
            raise UserError("--score judge needs a judge: pass --judge-url (an OpenAI-compatible server)")
        judge = Judge(client, structured, cfg.judge_template)
    if "reward" in cfg.score:
        reward = RewardModel(cfg.reward_model)
    scorer = Scorer(cfg, judge, reward)
    scorer.own_client = judge.client if judge and cfg.judge_url else None
    return scorer


def constraint_count(rng, share: float, max_k: int) -> int:
    """How many constraints to add to one instruction: 0 with probability 1 - share, else 1..max_k
    (one is most common: a small teacher meets two at once far less often)."""
    if share <= 0 or rng.random() >= share:
        return 0
    return 1 if max_k <= 1 or rng.random() < 0.65 else rng.randint(2, max_k)

