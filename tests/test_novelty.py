"""The novelty filter must agree with rouge_score exactly: same F, same keep/drop decisions, same
top-k neighbours as brute force. The references below call rouge_score directly."""

from __future__ import annotations

import argparse
import functools
import json
import random

import pytest
from rouge_score import rouge_scorer

from generator import novelty_kernel
from generator.errors import UserError
from generator.dedup import add_dedup_args, dedup_file, dedup_records
from generator.novelty import NoveltyPool, rouge_l

SCORERS = {s: rouge_scorer.RougeScorer(["rougeL"], use_stemmer=s) for s in (False, True)}

WORDS = ("write a the of poem story about dogs dog running runs ran runner quickly quick list five "
         "explain why sky is blue generate email to my boss asking for day off translate into "
         "french summarize article below classify sentiment review 42 2024 x9 café naïve").split()
ODD = ["", "   ", "!!!", "...?", "Ünïcödé — ñ", "日本語のテキスト", "C++ / C#", "e-mail", "3.14159",
       "UPPER lower MiXeD", "tab\tand\nnewline", "emoji 🙂 here"]


def _text(rng: random.Random, words=WORDS, lo=0, hi=14) -> str:
    out = []
    for _ in range(rng.randint(lo, hi)):
        w = rng.choice(words)
        r = rng.random()
        if r < 0.1:
            w = w.upper()
        elif r < 0.2:
            w = w.capitalize()
        elif r < 0.3:
            w += rng.choice(",.!?;:")
        elif r < 0.35:
            w = rng.choice(ODD)
        out.append(w)
    return " ".join(out)


def _near(rng: random.Random, text: str, words=WORDS) -> str:
    toks = text.split() or [rng.choice(words)]
    for _ in range(rng.randint(0, 3)):
        i, op = rng.randrange(len(toks)), rng.random()
        if op < 0.4:
            toks[i] = rng.choice(words)
        elif op < 0.7 and len(toks) > 1:
            del toks[i]
        else:
            toks.insert(i, rng.choice(words))
    out = " ".join(toks)
    return out.upper() if rng.random() < 0.2 else out + rng.choice(["", ".", "?", " !!"])


def _stream(n: int, seed: int, dup: float = 0.4, words=WORDS, lo=3, hi=14) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < dup:
            out.append(_near(rng, rng.choice(out[-50:]), words))
        else:
            out.append(_text(rng, words, lo, hi))
    return out


def _reference_keep(texts: list[str], threshold: float, stem: bool = False, seeds=()) -> list[bool]:
    """Self-Instruct's loop on rouge_score itself: keep iff F <= threshold against all kept.
    Texts are tokenized once with the scorer's own tokenizer, as Alpaca does, then scored with
    rouge_score's LCS scorer (what `RougeScorer.score` runs after tokenizing)."""
    tok = SCORERS[stem]._tokenizer.tokenize
    kept = [tok(s) for s in seeds]
    out = []
    for t in texts:
        toks = tok(t)
        keep = all(rouge_scorer._score_lcs(toks, k).fmeasure <= threshold for k in kept)
        out.append(keep)
        if keep:
            kept.append(toks)
    return out


def _brute_top(pool: list[str], text: str, k: int, stem: bool = False) -> list[tuple[str, float]]:
    scored = [(-SCORERS[stem].score(p, text)["rougeL"].fmeasure, i) for i, p in enumerate(pool)]
    return [(pool[i], -f) for f, i in sorted(scored)[:k]]


# --- rouge_l ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", [False, True])
def test_rouge_l_matches_rouge_score_bit_for_bit(stem):
    rng = random.Random(7 + stem)
    pairs = [(_text(rng), _text(rng)) for _ in range(1500)]
    pairs += [(a, _near(rng, a)) for a, _ in pairs[:1500]]  # overlapping pairs, high F
    pairs += [(a, b) for a in ODD for b in ODD] + [("", "")]
    assert len(pairs) >= 3000
    scorer = SCORERS[stem]
    mismatches = [(a, b) for a, b in pairs
                  if rouge_l(a, b, use_stemmer=stem) != scorer.score(a, b)["rougeL"].fmeasure]
    assert not mismatches, mismatches[:5]
    # the overlapping half really exercises high scores, not just near-zero ones
    assert sum(rouge_l(a, b, stem) > 0.7 for a, b in pairs[1500:3000]) > 300


def test_rouge_l_edge_cases():
    assert rouge_l("", "") == 0.0
    assert rouge_l("!!! ...", "!!! ...") == 0.0  # no tokens at all: rouge_score says 0
    assert rouge_l("hello", "") == 0.0
    assert rouge_l("Hello, World!", "hello world") == 1.0
    assert rouge_l("a b c d e f g h i j", "a b c d e f g x y z") == SCORERS[False].score(
        "a b c d e f g h i j", "a b c d e f g x y z")["rougeL"].fmeasure
    assert rouge_l("running dogs", "run dog", use_stemmer=True) == 1.0
    assert rouge_l("running dogs", "run dog") == 0.0
    assert rouge_l("café", "caf") == 1.0  # rouge_score's tokenizer drops non-[a-z0-9] characters


# --- keep/drop parity -----------------------------------------------------------------------------

STREAM = _stream(1500, seed=1)


@pytest.fixture(scope="module")
def reference_07():
    keep = _reference_keep(STREAM, 0.7)
    assert 0.25 * len(STREAM) < keep.count(False) < 0.75 * len(STREAM)  # many near-duplicates
    return keep


@pytest.fixture(params=["compiled", "numpy"])
def filter_path(request, monkeypatch):
    """Both ways of counting candidates: the compiled positional filter and the numpy fallback;
    yields the number of compiled calls so far, so a test can show the compiled one really ran."""
    calls = [0]
    if request.param == "numpy":
        monkeypatch.setattr(novelty_kernel, "candidates", None)
    else:
        real = novelty_kernel.candidates

        def counted(*args):
            calls[0] += 1
            return real(*args)

        monkeypatch.setattr(novelty_kernel, "candidates", counted)
    yield request.param, calls


def test_check_and_add_keeps_what_rouge_score_keeps(reference_07, filter_path):
    pool = NoveltyPool(0.7)
    got = [pool.check_and_add(t, k=0)[0] for t in STREAM]
    assert got == reference_07
    assert len(pool) == sum(reference_07)
    path, calls = filter_path
    assert (calls[0] > 100) == (path == "compiled")


LONG = _stream(500, seed=11, dup=0.5, lo=8, hi=30)  # small vocabulary, long texts: long posting lists


@functools.cache
def _reference_long(threshold: float) -> tuple[bool, ...]:
    return tuple(_reference_keep(LONG, threshold))


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_both_filter_paths_match_rouge_score_at_other_thresholds(threshold, filter_path):
    pool = NoveltyPool(threshold)
    assert tuple(pool.check_and_add(t, k=0)[0] for t in LONG) == _reference_long(threshold)
    path, calls = filter_path
    assert (calls[0] > 5) == (path == "compiled")


def test_check_with_neighbours_keeps_the_same(reference_07):
    pool = NoveltyPool(0.7)
    got = [pool.check_and_add(t, k=3)[0] for t in STREAM[:500]]
    assert got == reference_07[:500]


@pytest.mark.parametrize("k", [0, 5])
def test_filter_batch_keeps_what_rouge_score_keeps(reference_07, k):
    rng = random.Random(k)
    pool = NoveltyPool(0.7)
    got, i = [], 0
    while i < len(STREAM):
        size = rng.choice([1, 2, 7, 20, 64])
        batch = STREAM[i: i + size]
        results = pool.filter_batch(batch, k=k)
        assert len(results) == len(batch)
        got += [novel for novel, _ in results]
        i += size
    assert got == reference_07


def test_batch_members_are_checked_against_each_other():
    pool = NoveltyPool(0.7)
    batch = ["write a poem about the sea", "Write a poem about the sea!", "explain gravity to a child"]
    for k in (0, 2):
        pool = NoveltyPool(0.7)
        assert [novel for novel, _ in pool.filter_batch(batch, k=k)] == [True, False, True]
    novel, near = pool.check("write a poem about the sea", k=1)
    assert not novel and near == [("write a poem about the sea", 1.0)]


# Tiny vocabulary and short texts: many pairs land exactly on F = 1/2, 2/3, 0.7, 3/4, 0.8 ...
TINY = "a b c d e f g h".split()


@pytest.mark.parametrize("threshold", [0.0, 0.5, 2 / 3, 0.7, 0.75, 0.8, 6 / 7, 1.0])
def test_boundary_thresholds_match_rouge_score(threshold):
    texts = _stream(400, seed=int(threshold * 1000), dup=0.3, words=TINY, lo=1, hi=10)
    want = _reference_keep(texts, threshold)
    pool = NoveltyPool(threshold)
    assert [pool.check_and_add(t, k=0)[0] for t in texts] == want
    pool = NoveltyPool(threshold)
    got = []
    for i in range(0, len(texts), 9):
        got += [novel for novel, _ in pool.filter_batch(texts[i: i + 9], k=2)]
    assert got == want


def test_score_exactly_at_threshold_is_kept():
    base, cand = "a b c d e f g h i j", "a b c d e f g x y z"  # LCS 7 of 10 and 10: F = 0.7
    f = SCORERS[False].score(base, cand)["rougeL"].fmeasure
    assert f == 0.7  # in rouge_score's own floats
    pool = NoveltyPool(0.7)
    pool.add(base)
    assert pool.check(cand, k=0)[0] is True  # the rule is "drop if F > threshold"
    assert pool.check("a b c d e f g h y z", k=0)[0] is False  # 8 of 10: F = 0.8


@pytest.mark.parametrize("threshold", [0.5, 2 / 3, 0.7, 0.75, 0.8, 14 / 20])
def test_every_lcs_and_length_combination_at_the_boundary(threshold):
    # A pair with LCS l between texts of m and n tokens, for every l <= min(m, n) <= 20: all
    # pairs whose F sits exactly on (or one float step around) the threshold are among them.
    vocab = [f"w{i}" for i in range(40)]
    for m in range(1, 21):
        a = " ".join(vocab[:m])
        pool = NoveltyPool(threshold)
        pool.add(a)
        for n in range(1, 21):
            for lcs in range(min(m, n) + 1):
                b = " ".join(vocab[:lcs] + vocab[20: 20 + n - lcs])
                want = SCORERS[False].score(a, b)["rougeL"].fmeasure <= threshold
                assert pool.check(b, k=0)[0] == want, (m, n, lcs)


def test_stemming_pool_matches_rouge_score_with_stemmer():
    texts = _stream(300, seed=5)
    pool = NoveltyPool(0.7, use_stemmer=True)
    assert [pool.check_and_add(t, k=0)[0] for t in texts] == _reference_keep(texts, 0.7, stem=True)
    pool = NoveltyPool(0.7, use_stemmer=True)
    pool.add("the dog runs quickly")
    assert pool.check("The dogs running quickly", k=0)[0] is False
    assert NoveltyPool(0.7).check("The dogs running quickly", k=0)[0] is True  # unstemmed


def test_seeded_pool_matches_reference_with_seeds():
    texts = _stream(400, seed=9)
    seeds, rest = texts[:40], texts[40:]  # seeds include near-duplicates of each other: all kept
    pool = NoveltyPool(0.7)
    for s in seeds:
        pool.add(s)
    assert len(pool) == 40
    assert [pool.check_and_add(t, k=0)[0] for t in rest] == _reference_keep(rest, 0.7, seeds=seeds)


def test_add_is_unconditional_and_empty_texts_are_novel():
    pool = NoveltyPool(0.7)
    pool.add("write a poem")
    pool.add("write a poem")
    assert len(pool) == 2
    assert pool.check("Write a poem.", k=0) == (False, [])
    assert pool.check_and_add("!!!", k=0) == (True, [])  # no tokens: F = 0 with everything
    assert pool.check_and_add("", k=0) == (True, [])
    assert len(pool) == 4
    novel, near = pool.check("", k=3)
    assert novel and near == [("write a poem", 0.0), ("write a poem", 0.0), ("!!!", 0.0)]
    with pytest.raises(ValueError):
        NoveltyPool(1.5)


def test_very_different_lengths_at_low_thresholds():
    long_text = "a " + "z " * 5000  # F with "a b" is 2/5003 = 0.0004
    for threshold in (0.0, 0.0003, 0.0005):
        pool = NoveltyPool(threshold)
        pool.add("a b")
        want = SCORERS[False].score("a b", long_text)["rougeL"].fmeasure <= threshold
        assert pool.check(long_text, k=0)[0] == want
        assert pool.check(long_text, k=1)[0] == want


# --- top-k ----------------------------------------------------------------------------------------


def test_top_k_matches_brute_force():
    pool_texts = _stream(300, seed=11, dup=0.5)
    pool = NoveltyPool(0.7)
    for t in pool_texts:
        pool.add(t)
    queries = _stream(60, seed=12, dup=0.0) + [_near(random.Random(i), pool_texts[i * 5]) for i in range(30)]
    queries += ["", "zzz unknown words only", pool_texts[0]]
    for q in queries:
        ranked = _brute_top(pool_texts, q, len(pool_texts))
        assert pool.check(q, k=0) == (ranked[0][1] <= 0.7, [])
        for k in (1, 5, 12):
            assert pool.check(q, k=k) == (ranked[0][1] <= 0.7, ranked[:k]), (q, k)
    small = NoveltyPool(0.7)
    for t in pool_texts[:3]:
        small.add(t)
    assert small.check(queries[0], k=10)[1] == _brute_top(pool_texts[:3], queries[0], 10)


def test_filter_batch_neighbours_include_earlier_batch_members():
    texts = _stream(200, seed=21, dup=0.5)
    pool = NoveltyPool(0.7)
    kept: list[str] = []
    for i in range(0, len(texts), 13):
        for t, (novel, near) in zip(texts[i: i + 13], pool.filter_batch(texts[i: i + 13], k=4)):
            want = _brute_top(kept, t, 4)
            assert near == want
            assert novel == (not want or want[0][1] <= 0.7)
            if novel:
                kept.append(t)


# --- dedup of whole files -------------------------------------------------------------------------


def test_dedup_records_keeps_first_occurrence_in_order():
    recs = [{"instruction": t, "id": i} for i, t in enumerate(STREAM[:400])]
    kept, dropped = dedup_records(recs, threshold=0.7)
    keep = _reference_keep(STREAM[:400], 0.7)
    assert [r["id"] for r in kept] == [i for i, k in enumerate(keep) if k]
    assert [r["id"] for r in dropped] == [i for i, k in enumerate(keep) if not k]
    for r in dropped[:60]:
        earlier = [k["instruction"] for k in kept if k["id"] < r["id"]]
        scores = [rouge_l(t, r["instruction"]) for t in earlier]
        best = max(scores)
        assert best > 0.7
        assert r["_nearest"] == {"instruction": earlier[scores.index(best)], "rouge_l": best}
    assert "_nearest" not in recs[0] and all("_nearest" not in r for r in kept)


def test_dedup_file_round_trip(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "sub" / "out.jsonl"
    rows = [{"instruction": "Write a poem about the sea.", "output": "..."},
            {"instruction": "Explain how rainbows form.", "output": "é"},
            {"instruction": "write a poem about the sea", "output": "dup"},
            {"instruction": "List five fruits.", "output": ""}]
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    assert dedup_file(src, out) == (3, 1)
    assert [json.loads(line) for line in out.read_text().splitlines()] == [rows[0], rows[1], rows[3]]
    assert dedup_file(src, out, threshold=1.0) == (4, 0)


def test_dedup_file_reports_bad_lines(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": "a b"}\n{"instruction": "c d"}\n{"instruction": "e f", "outp\n')
    with pytest.raises(UserError, match=r"in\.jsonl line 3: not valid JSON"):
        dedup_file(src, tmp_path / "out.jsonl")
    src.write_text('{"instruction": "a b"}\n{"prompt": "c d"}\n')
    with pytest.raises(UserError, match=r"in\.jsonl line 2: no 'instruction' field"):
        dedup_file(src, tmp_path / "out.jsonl")
    src.write_text('{"prompt": "c d"}\n[1, 2]\n')
    with pytest.raises(UserError, match="line 2: expected a JSON object"):
        dedup_file(src, tmp_path / "out.jsonl", key="prompt")
    with pytest.raises(UserError, match="missing.jsonl: no such file"):
        dedup_file(tmp_path / "missing.jsonl", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    with pytest.raises(UserError, match="record 2: no 'instruction' field"):
        dedup_records([{"instruction": "x"}, {"text": "y"}])


def test_dedup_command(tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"q": t}) + "\n" for t in ["a b c", "A B C!", "d e f"]))
    p = argparse.ArgumentParser()
    add_dedup_args(p)
    args = p.parse_args([str(src), str(out), "--key", "q", "--threshold", "0.9"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == "kept 2 of 3 (dropped 1 near-duplicates, ROUGE-L > 0.9)"
    assert len(out.read_text().splitlines()) == 2
    args = p.parse_args([str(src), str(out), "--threshold", "1.5"])
    with pytest.raises(UserError, match="--threshold must be between 0 and 1"):
        args.func(args)


# --- languages other than English: tokenizer="unicode" --------------------------------------------

# One word differs. rouge_score cuts accented words into ASCII pieces ("préférées" -> pr f r es),
# so the French pair looks less alike than it is; the Chinese pair has no rouge_score token at all.
FRENCH = ("Cite tes trois activités préférées.", "Cite tes trois activités favorites.")
CHINESE = ("请写一首关于大海的短诗。", "请写一首关于大山的短诗。")


def test_unicode_tokenizer_words():
    from generator.novelty import tokens

    assert tokens("Écris un POÈME, s'il te plaît!", tokenizer="unicode") == ["écris", "un", "poème", "s", "il",
                                                                            "te", "plaît"]
    assert tokens("写诗 about ＡＢＣ１２", tokenizer="unicode") == ["写", "诗", "about", "abc12"]
    decomposed = "e\u0301te\u0301"  # "été" written with combining accents: one word after NFKC
    assert tokens(decomposed, tokenizer="unicode") == ["été"]
    with pytest.raises(ValueError):
        tokens("x", tokenizer="bpe")


@pytest.mark.parametrize("pair", [FRENCH, CHINESE])
def test_unicode_catches_near_duplicates_the_default_misses(pair):
    a, b = pair
    assert rouge_l(a, b, tokenizer="unicode") > 0.7
    assert rouge_l(a, b) <= 0.7
    for tokenizer, novel in (("unicode", False), ("rouge", True)):
        pool = NoveltyPool(0.7, tokenizer=tokenizer)
        pool.add(a)
        assert pool.check(b, k=1)[0] is novel
        kept, dropped = dedup_records([{"instruction": a}, {"instruction": b}], tokenizer=tokenizer)
        assert len(kept) == (2 if novel else 1)


def test_unicode_pool_matches_brute_force():
    """The index and the fast LCS are tokenizer-agnostic: keep/drop equals a brute-force loop over
    rouge_l with the same tokenizer, on a stream of French and Chinese near-duplicates."""
    words = "écris un poème sur la mer été hiver traduis 这 是 一 个 关于 大海 的 诗 写 请 résumé naïve".split()
    texts = _stream(600, seed=5, words=words)
    pool, kept, expect = NoveltyPool(0.7, tokenizer="unicode"), [], []
    for t in texts:
        keep = all(rouge_l(t, k, tokenizer="unicode") <= 0.7 for k in kept)
        expect.append(keep)
        if keep:
            kept.append(t)
    assert [pool.check_and_add(t, k=0)[0] for t in texts] == expect
    assert 50 < sum(expect) < 550  # both decisions really happen


def test_dedup_command_tokenizer_flag(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"instruction": t}, ensure_ascii=False) + "\n" for t in CHINESE))
    p = argparse.ArgumentParser()
    add_dedup_args(p)
    args = p.parse_args([str(src), str(out), "--tokenizer", "unicode"])
    assert args.func(args) == 0 and len(out.read_text().splitlines()) == 1
    args = p.parse_args([str(src), str(out)])
    assert args.func(args) == 0 and len(out.read_text().splitlines()) == 2


def test_full_pool_is_a_clear_user_error():
    pool = NoveltyPool(0.7, capacity=6)
    pool.add("one two three")
    pool.check_and_add("four five six")  # exactly at capacity: fine
    assert len(pool) == 2
    with pytest.raises(UserError, match="novelty pool is full: 6 distinct words after 2 texts"):
        pool.check_and_add("seven")
    assert pool.check("one two six", k=1)[0]  # known words still work after the refusal
