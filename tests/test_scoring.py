"""Choosing among a request's sampled answers: the consensus score (generator/scoring.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from generator.scoring import ScoreConfig, Scorer, combined, consensus, new_candidate

HERE = Path(__file__).parent


def test_consensus_is_the_mean_rouge_l_to_the_other_answers_as_rouge_score_computes_it():
    texts = ["The chemical symbol for gold is Au.", "Gold's symbol is Au, from the Latin aurum.",
             "Gold is a metal.", ""]
    oracle = rouge_scorer.RougeScorer(["rougeL"])
    want = [sum(oracle.score(a, b)["rougeL"].fmeasure for j, b in enumerate(texts) if j != i) / 3
            for i, a in enumerate(texts)]
    assert consensus(texts) == pytest.approx(want, abs=1e-4)
    assert consensus(["only one"]) == [None] and consensus([]) == []


def _choose(request: str, answers: list[str], **cfg) -> tuple[int | None, list[dict]]:
    cands = [new_candidate(a) for a in answers]
    best, _ = asyncio.run(Scorer(ScoreConfig(**cfg))(request, request, "", cands, []))
    return best, cands


def test_the_answer_the_samples_agree_on_is_kept_not_the_one_that_repeats_the_request():
    """Real samples of the 135M teacher (tests/answers_romeo.json). Every one passes the
    checks except a deflection. The old rule (most of the request's words) kept "This question is
    meant to focus on ... which is: Who wrote Romeo and Juliet?"; the consensus keeps the answer
    that names Shakespeare, which three of the others also do."""
    case = json.loads((HERE / "answers_romeo.json").read_text())
    best, cands = _choose(case["request"], case["answers"])
    relevance = [c["scores"]["relevance"] for c in cands]
    assert relevance.index(max(relevance)) == 1  # what selection by relevance kept
    assert best == 0 and "Shakespeare" in cands[best]["text"]
    assert cands[3]["reasons"] == ["deflects"] and "consensus" in cands[3]["scores"]  # every sample counts
    assert max(range(6), key=lambda i: cands[i]["scores"]["consensus"]) == 0


def test_one_sample_has_no_consensus_and_combined_falls_back_to_relevance():
    best, cands = _choose("Name a primary colour.", ["Red is a primary colour."])
    assert best == 0 and "consensus" not in cands[0]["scores"]
    assert combined(cands[0]) == cands[0]["scores"]["relevance"]
    # records written before the consensus score are ranked as they were
    assert combined({"scores": {"relevance": 0.5, "judge": 8}}) == pytest.approx(0.65)
    assert combined({"scores": {"relevance": 0.5, "consensus": 0.25, "judge": 8}}) == pytest.approx(0.525)


def test_consensus_counts_words_of_any_script_with_the_unicode_tokenizer():
    answers = ["黄金的化学符号是Au。", "金的符号是Au。", "金子是黄色的。"]
    assert consensus(answers, "rouge") == [0.5, 0.5, 0.0]  # rouge-score's tokens: only the "au"s
    assert consensus(answers, "unicode") == [0.5333, 0.5667, 0.3]  # each CJK character a word
    best, _ = _choose("黄金的化学符号是什么？", answers, tokenizer="unicode")
    assert best == 1


def test_a_refusal_that_opens_with_no_is_a_deflection():
    """Seen in a magpie run: "No, I'm unable to provide a solution that aligns with the requested
    solution." passed the checks; a plain "No, ..." answer still does."""
    from generator.scoring import check_reasons

    assert check_reasons("No, I'm unable to provide a solution that aligns with it.", "stop", "q") == ["deflects"]
    assert check_reasons("Unfortunately, I cannot help with that.", "stop", "q") == ["deflects"]
    assert check_reasons("No, the sentence is correct as written.", "stop", "q") == []
