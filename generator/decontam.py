"""Benchmark decontamination: drop a generated instruction that shares a 13-gram with, or is a
ROUGE-L near-duplicate of, any instruction in the given evaluation files. Both count words the
way the novelty filter does (`tokenizer`: rouge_score's [a-z0-9] runs, or unicode words of any
script with each CJK character a word)."""

from __future__ import annotations

from pathlib import Path

from generator.novelty import NoveltyPool, tokens
from generator.seeds import load_seeds

NGRAM = 13


def words(text: str, tokenizer: str = "rouge") -> list[str]:
    return tokens(text, tokenizer=tokenizer)


def ngrams(text: str, n: int = NGRAM, tokenizer: str = "rouge") -> set[tuple[str, ...]]:
    w = words(text, tokenizer)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


class Decontaminator:
    def __init__(self, texts: list[str], threshold: float = 0.7, tokenizer: str = "rouge"):
        self.tokenizer = tokenizer
        self.grams: set[tuple[str, ...]] = set()
        self.pool = NoveltyPool(threshold=threshold, tokenizer=tokenizer)
        for t in texts:
            self.grams |= ngrams(t, tokenizer=tokenizer)
            self.pool.add(t)

    @classmethod
    def from_files(cls, paths: list[str | Path], threshold: float = 0.7, tokenizer: str = "rouge"
                   ) -> "Decontaminator":
        texts = []
        for p in paths:  # any format the seed reader takes: Self-Instruct, Alpaca, CSV, parquet
            for task in load_seeds(p):
                texts.append(task.instruction)
        return cls(texts, threshold, tokenizer)

    def check(self, instruction: str) -> str | None:
        """The rejection reason, or None when the instruction is clean."""
        if self.grams and not self.grams.isdisjoint(ngrams(instruction, tokenizer=self.tokenizer)):
            return "contaminated_13gram"
        if not self.pool.check(instruction, k=0)[0]:
            return "contaminated_rouge"
        return None
