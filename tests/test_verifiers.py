"""Verifiable constraints: golden answers per type, sampling, phrasings, loose mode, and the
held-out verifiable eval set (seeds/verifiable_eval.jsonl)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import re
import string
from collections import Counter
from pathlib import Path

import pytest

from generator.decontam import Decontaminator, ngrams
from generator.verifiers import TYPES, augment, check, check_all, render, sample_constraints

ROOT = Path(__file__).resolve().parent.parent
EVAL_FILE = ROOT / "seeds" / "verifiable_eval.jsonl"
REFERENCE_FILES = [ROOT / "seeds" / f for f in ("seed_tasks.jsonl", "test_seeds.jsonl", "eval_set.jsonl")]

# type -> [(params, response, expected under strict checking)]
GOLDEN: dict[str, list[tuple[dict, str, bool]]] = {
    "lowercase": [({}, "all of this is lower case, even the end.", True), ({}, "This has a Capital.", False),
                  ({}, "123 456", False)],
    "uppercase": [({}, "ALL CAPS HERE, 100%!", True), ({}, "ALL CAPS except this", False)],
    "capital_words": [({"n": 2}, "This is VERY IMPORTANT.", True),
                      ({"n": 2}, "Only ONE word here, I think.", False)],  # "I" is too short to count
    "no_commas": [({}, "No commas here; none at all.", True), ({}, "Well, no.", False)],
    "max_words": [({"n": 5}, "One two three four five.", True), ({"n": 5}, "one two three four five six", False),
                  ({"n": 5}, "  ", False), ({"n": 3}, "I don't - know", True)],  # "-" is no word
    "min_words": [({"n": 5}, "a b c d e", True), ({"n": 5}, "a b c d", False)],
    "max_sentences": [({"n": 2}, "First one. Second one!", True), ({"n": 2}, "One. Two? Three.", False),
                      ({"n": 2}, "P.S. is one sentence here.", True)],
    "min_sentences": [({"n": 3}, "One. Two? Three!", True), ({"n": 3}, "One. Two.", False),
                      ({"n": 3}, "A heading\n* a bullet\nA closing line.", True)],
    "paragraphs": [({"n": 2}, "First paragraph.\n\nSecond paragraph.", True),
                   ({"n": 2}, "First.\n\nSecond.\n  \nThird.", False), ({"n": 2}, "First.\n***\nSecond.", False)],
    "paragraph_dividers": [({"n": 2}, "First.\n***\nSecond.", True), ({"n": 2}, "First.\n***\n***\nSecond.", False),
                           ({"n": 2}, "First.\n\nSecond.", False), ({"n": 2}, "A\n******\nB", False)],
    "bullets": [({"n": 3}, "**Intro**\n* apples\n* pears\n- plums\n---", True), ({"n": 3}, "* one\n* two", False),
                ({"n": 2}, "*emphasis* first\n* one\n* two", True)],
    "numbered_items": [({"n": 2}, "Steps:\n1. mix\n2) bake", True), ({"n": 2}, "1. a\n2. b\n3. c", False)],
    "sections": [({"n": 2}, "SECTION 1\nIntro.\nSECTION 2\nBody.", True),
                 ({"n": 2}, "## SECTION 1\nIntro.\n## SECTION 2\nBody.", True),
                 ({"n": 2}, "Section 1\nIntro.\nSection 2\nBody.", False)],
    "highlights": [({"n": 2}, "This is *one* and **two**.", True),
                   ({"n": 2}, "* a bullet\n* another with *one* highlight", False)],
    "placeholders": [({"n": 2}, "Dear [name], meet me at [address].", True), ({"n": 2}, "Dear [name], hi.", False)],
    "title": [({}, "<<My Garden Day>>\nIt was sunny.", True), ({}, "<My Garden Day>\nIt was sunny.", False),
              ({}, "<<>> empty", False)],
    "postscript": [({"marker": "P.S."}, "See you soon.\n\nP.S. Bring snacks.", True),
                   ({"marker": "P.S."}, "See you soon. P.S. bring snacks.", False),
                   ({"marker": "P.P.S."}, "Hi.\nP.S. one note", False)],
    "keywords": [({"words": ["river", "lantern"]}, "Two Rivers and one lantern.", True),
                 ({"words": ["river", "lantern"]}, "Just a river.", False)],
    "forbidden_words": [({"words": ["very", "good"]}, "Every delivery arrived in goodwill.", True),
                        ({"words": ["very", "good"]}, "Very nice.", False)],
    "letter_frequency": [({"letter": "w", "n": 3}, "We went west.", True), ({"letter": "w", "n": 3}, "We went.", False)],
    "keyword_frequency": [({"word": "garden", "n": 2}, "A garden. Gardens grow.", True),
                          ({"word": "garden", "n": 2}, "A garden and a gardener.", False)],
    "start_phrase": [({"phrase": "In short,"}, "  In short, yes.", True),
                     ({"phrase": "In short,"}, "Well, in short, yes.", False)],
    "end_phrase": [({"phrase": "Hope this helps!"}, "Boil it. Hope this helps!\n", True),
                   ({"phrase": "Hope this helps!"}, "Hope this helps! Bye.", False)],
    "quotes": [({}, '"Hello there."', True), ({}, 'Hello "there"', False), ({}, '"', False)],
    "json": [({}, '{"answer": "tea", "cups": 2}', True), ({}, "[1, 2]", False),
             ({}, '```json\n{"answer": "tea"}\n```', False)],
    "two_responses": [({}, "Answer A.\n******\nAnswer B.", True), ({}, "Same.\n******\nSame.", False),
                      ({}, "A ****** B ****** C", False)],
    "answer_options": [({"options": ["My answer is yes.", "My answer is no."]}, "I think so. My answer is yes.", True),
                       ({"options": ["My answer is yes.", "My answer is no."]},
                        "My answer is yes. My answer is no.", False),
                       ({"options": ["My answer is yes.", "My answer is no."]}, "My answer is yes", False)],
    "no_digits": [({}, "Twenty-two cats.", True), ({}, "22 cats.", False)],
    "end_with_question": [({}, "Do you agree?", True), ({}, "Do you agree? I do.", False)],
}

# (type, params, response, strict result, loose result)
LOOSE = [
    ("lowercase", {}, "Sure! Here it is:\nall lowercase text here", False, True),  # preamble line dropped
    ("json", {}, '```json\n{"answer": "tea"}\n```', False, True),  # fence = first + last line
    ("start_phrase", {"phrase": "Great question!"}, "**Great question!** Cats purr.", False, True),  # markdown
    ("end_phrase", {"phrase": "Thanks for reading."}, "Done. Thanks for reading.\n-- Bot", False, True),
    ("lowercase", {}, "Hello\nWorld\nAgain", False, False),  # loose is not anything-goes
]


def _c(name: str, params: dict) -> dict:
    return {"type": name, "params": params, "text": ""}


def test_at_least_25_types():
    assert len(TYPES) >= 25


def test_every_type_has_a_passing_and_a_failing_golden_answer():
    assert set(GOLDEN) == set(TYPES), f"no golden cases for {set(TYPES) - set(GOLDEN)}"
    for name, cases in GOLDEN.items():
        assert {expected for _, _, expected in cases} == {True, False}, name


@pytest.mark.parametrize("name,params,response,expected",
                         [(n, p, r, e) for n, cases in GOLDEN.items() for p, r, e in cases])
def test_golden(name, params, response, expected):
    assert check(response, _c(name, params)) is expected


@pytest.mark.parametrize("name,params,response,strict,loose", LOOSE)
def test_strict_vs_loose(name, params, response, strict, loose):
    assert check(response, _c(name, params)) is strict
    assert check(response, _c(name, params), loose=True) is loose


def test_loose_never_rejects_a_strict_pass():
    for name, cases in GOLDEN.items():
        for params, response, expected in cases:
            if expected:
                assert check(response, _c(name, params), loose=True), name


def test_check_all():
    cs = [_c("no_commas", {}), _c("max_words", {"n": 3}), _c("lowercase", {})]
    assert check_all("hello there friend", cs) == [True, True, True]
    assert check_all("Hello, there friend and more", cs) == [False, False, False]


def test_conflicts_are_symmetric_and_name_real_types():
    for t in TYPES.values():
        assert t.name not in t.conflicts
        for other in t.conflicts:
            assert other in TYPES, f"{t.name} conflicts with unknown type {other}"
            assert t.name in TYPES[other].conflicts, (t.name, other)
    required = [("lowercase", "uppercase"), ("min_words", "max_words"), ("json", "bullets"), ("json", "sections"),
                ("json", "title"), ("json", "postscript"), ("json", "quotes"), ("start_phrase", "quotes"),
                ("start_phrase", "json"), ("end_phrase", "quotes"), ("end_phrase", "json")]
    for a, b in required:
        assert b in TYPES[a].conflicts, (a, b)


@pytest.mark.parametrize("phrasing", ["train", "eval"])
def test_sample_constraints_never_combines_conflicting_types(phrasing):
    seen = Counter()
    for seed, k in itertools.product(range(400), (1, 2, 3)):
        cs = sample_constraints(random.Random(seed), k, phrasing, exclude=frozenset())
        assert len(cs) == k
        names = [c["type"] for c in cs]
        assert len(set(names)) == k
        for a, b in itertools.combinations(names, 2):
            assert b not in TYPES[a].conflicts, (seed, a, b)
        for c in cs:
            assert set(c) == {"type", "params", "text"}
            assert c["text"] in {render(p, c["params"]) for p in getattr(TYPES[c["type"]], phrasing)}
            assert json.loads(json.dumps(c)) == c  # params survive a JSONL round trip
        seen.update(names)
    assert set(seen) == set(TYPES)  # every type gets sampled
    with pytest.raises(ValueError):
        sample_constraints(random.Random(0), 1, "test")


def test_default_sampling_leaves_out_task_specific_types_and_k_zero_is_none():
    from generator.verifiers import TASK_SPECIFIC

    seen = Counter(c["type"] for seed in range(400) for c in sample_constraints(random.Random(seed), 2))
    assert not TASK_SPECIFIC & set(seen) and set(seen) == set(TYPES) - TASK_SPECIFIC
    assert sample_constraints(random.Random(0), 0) == []


def _grams(text: str, n: int) -> set[tuple[str, ...]]:
    w = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_train_and_eval_phrasings_are_disjoint():
    for t in TYPES.values():
        assert len(t.train) >= 2 and len(t.eval) >= 2, t.name
        train = set().union(*(_grams(p, 5) for p in t.train))
        shared = train & set().union(*(_grams(p, 5) for p in t.eval))
        assert not shared, (t.name, shared)


def test_every_phrasing_formats_with_its_sampled_params_and_states_them_all():
    rng = random.Random(1)
    for t in TYPES.values():
        for _ in range(30):
            params = t.sample(rng)
            for phrase in t.train + t.eval:
                fields = {f for _, f, _, _ in string.Formatter().parse(phrase) if f}
                assert fields == set(params), (t.name, phrase)  # every parameter is said out loud
                text = render(phrase, params)
                assert "{" not in text and "}" not in text, (t.name, text)


def test_augment_appends_constraint_texts():
    cs = sample_constraints(random.Random(3), 2, "train")
    assert augment("Describe a cat.  ", cs) == "Describe a cat. " + " ".join(c["text"] for c in cs)


# --- The held-out verifiable eval set ---------------------------------------------------------

@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in EVAL_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def _builder():
    spec = importlib.util.spec_from_file_location("build_verifiable_eval", ROOT / "seeds" / "build_verifiable_eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_eval_file_is_what_the_script_builds(rows):
    assert _builder().build() == rows


def test_eval_rows_are_valid(rows):
    assert len(rows) >= 320
    assert [r["id"] for r in rows] == [f"ve-{i:04d}" for i in range(1, len(rows) + 1)]
    sizes = Counter(len(r["constraints"]) for r in rows)
    assert set(sizes) == {1, 2, 3}
    assert abs(sizes[1] / len(rows) - 0.55) < 0.03 and abs(sizes[2] / len(rows) - 0.35) < 0.03
    bases = Counter(r["base_instruction"] for r in rows)
    assert max(bases.values()) <= 2 and len(bases) >= 160
    per_base: dict[str, list] = {}
    for r in rows:
        names = [c["type"] for c in r["constraints"]]
        assert len(set(names)) == len(names)
        for c in r["constraints"]:
            t = TYPES[c["type"]]
            assert set(c["params"]) == set(t.sample(random.Random(0)))
            assert c["text"] in {render(p, c["params"]) for p in t.eval}, c  # eval phrasings only
        for a, b in itertools.combinations(names, 2):
            assert b not in TYPES[a].conflicts, (r["id"], a, b)
        assert r["instruction"] == augment(r["base_instruction"], r["constraints"])
        per_base.setdefault(r["base_instruction"], []).append(frozenset(names))
    assert all(len(set(v)) == len(v) for v in per_base.values())  # a reused task gets other constraints
    counts = Counter(c["type"] for r in rows for c in r["constraints"])
    assert set(counts) == set(TYPES) and min(counts.values()) >= 5


def test_eval_rows_are_held_out(rows):
    reference = Decontaminator.from_files(REFERENCE_FILES)
    train_grams = set()
    rng = random.Random(7)
    for t in TYPES.values():
        for _ in range(100):
            params = t.sample(rng)
            train_grams |= set().union(*(ngrams(render(p, params)) for p in t.train))
    for r in rows:
        assert reference.check(r["instruction"]) is None, r["id"]
        assert reference.check(r["base_instruction"]) is None, r["id"]
        assert train_grams.isdisjoint(ngrams(r["instruction"])), r["id"]
    # The other direction, as `sprout generate --decontaminate seeds/verifiable_eval.jsonl` sees it:
    # the file loads as a decontamination list and no seed instruction trips it.
    ours = Decontaminator.from_files([EVAL_FILE])
    for path in REFERENCE_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            assert ours.check(json.loads(line)["instruction"]) is None, line


def test_held_out_check_catches_overlap(rows):
    """The guard above can fail: a row that copies a seed instruction or a train phrasing is caught."""
    seed = json.loads(REFERENCE_FILES[0].read_text(encoding="utf-8").splitlines()[1])["instruction"]
    assert Decontaminator.from_files(REFERENCE_FILES).check(seed + " " + rows[0]["instruction"]) is not None
    mod = _builder()
    bad = dict(rows[0], instruction=rows[0]["base_instruction"] + " " +
               render(TYPES["paragraph_dividers"].train[1], {"n": 3}))
    assert mod.problems([bad])
