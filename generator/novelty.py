"""ROUGE-L novelty filter: keep a new instruction only if no kept one is too similar to it.

Self-Instruct and Stanford Alpaca drop an instruction whose ROUGE-L F with any pool instruction is
above 0.7, scoring every pair with rouge_score's pure-Python LCS. This module takes the same
decisions, bit for bit, far faster: tokens (rouge_score's own tokenizer) become one character
each so rapidfuzz's C++ LCS scores a pair in nanoseconds; an inverted index with prefix filtering
(as in set-similarity joins) leaves only the few entries that *can* pass the threshold; and each
decision uses F recomputed in rouge_score's float arithmetic from the exact integer LCS.
Top-k neighbours below the threshold are found exactly too, from a cheap upper bound on F for
every entry (shared-token counts), so only a handful of entries need an LCS.

`tokenizer="unicode"` counts words of any script instead (rouge_score keeps only [a-z0-9], so a
French instruction loses its accented words and a Chinese one has no tokens at all and is always
"novel"); the default stays rouge_score's, bit for bit.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from array import array
from collections import Counter
from itertools import chain

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Indel, LCSseq
from rouge_score import tokenize as rouge_tokenize

from generator import novelty_kernel
from generator.errors import UserError

Neighbours = list[tuple[str, float]]
Ranked = list[tuple[int, float]]  # (pool position, F), best first, ties: earliest added first

# Bounds are loosened by this much, so float rounding in a bound can only let *more* candidates
# through (tests show it is needed: F = 14/20 against t = 0.7, say). Exact F decides.
_SLACK = 1e-9


class _MemoStemmer:
    """nltk's Porter stemmer, which rouge_score uses, behind a cache: stemming is a pure function
    of the word, costs ~10 us, and an instruction stream repeats the same words endlessly."""

    def __init__(self):
        from nltk.stem import porter

        self.stem = functools.cache(porter.PorterStemmer().stem)  # what rouge_score calls


@functools.cache
def _stemmer() -> _MemoStemmer:
    return _MemoStemmer()


_RUN = re.compile(r"[a-z0-9]+")
# Scripts written without spaces between words: each character is a token (as in Chinese ROUGE
# evaluations), so a near-duplicate shares a long character subsequence. Han (with extensions
# and compatibility ideographs), hiragana and katakana.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
# One CJK character, or a run of letters / digits of any other script ([^\W_] is \w without _).
_UNICODE_RUN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")
TOKENIZERS = ("rouge", "unicode")


def tokens(text: str, use_stemmer: bool = False, tokenizer: str = "rouge") -> list[str]:
    """ROUGE-L tokens of `text`.

    "rouge": rouge_score's tokens: lowercase [a-z0-9] runs, Porter stems if asked. Without
    stemming, rouge_score's lower / substitute / split / validate sequence keeps exactly the
    [a-z0-9] runs of the lowercased text; one findall gives the same list ~3x faster (the parity
    tests compare against rouge_score itself).
    "unicode": case-folded runs of letters and digits of any script, each CJK character a token
    of its own; NFKC first, so a decomposed "é" is one letter and full-width digits are digits.
    Stemming (English Porter, as rouge_score: words over 3 characters) applies to both."""
    if tokenizer == "unicode":
        toks = _UNICODE_RUN.findall(unicodedata.normalize("NFKC", text).casefold())
        if use_stemmer:
            stem = _stemmer().stem
            toks = [stem(t) if len(t) > 3 else t for t in toks]
        return toks
    if tokenizer != "rouge":
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    if not use_stemmer:
        return _RUN.findall(text.lower())
    return rouge_tokenize.tokenize(text, _stemmer())


def _fmeasure(lcs: int, m: int, n: int) -> float:
    """rouge_score's F for an LCS of `lcs` tokens between texts of m and n tokens, with the same
    float operations in the same order, hence the same bits (it is symmetric in m and n)."""
    if lcs == 0:  # also covers empty texts, where rouge_score returns 0
        return 0.0
    precision, recall = lcs / n, lcs / m
    return 2 * precision * recall / (precision + recall)


def _char(i: int) -> str:
    # Lone surrogate code points are not valid text for C code reading a str: skip them.
    return chr(i + 0x800 if i >= 0xD800 else i)


def rouge_l(a: str, b: str, use_stemmer: bool = False, tokenizer: str = "rouge") -> float:
    """ROUGE-L F of two texts: rouge_score's `RougeScorer(['rougeL'], use_stemmer=...)
    .score(a, b)['rougeL'].fmeasure`, exactly (with the default tokenizer)."""
    ta, tb = tokens(a, use_stemmer, tokenizer), tokens(b, use_stemmer, tokenizer)
    code = {t: _char(i) for i, t in enumerate(dict.fromkeys(ta + tb))}
    lcs = LCSseq.similarity("".join(map(code.get, ta)), "".join(map(code.get, tb)))
    return _fmeasure(lcs, len(ta), len(tb))


# Each distinct token is one code point (see `_char`): at most this many per pool.
CAPACITY = 0x110000 - 0x800


def _rank_key(hit: tuple[int, float]) -> tuple[float, int]:
    return -hit[1], hit[0]


class NoveltyPool:
    """The instructions kept so far. A text is novel iff no entry has ROUGE-L F > threshold with
    it (rouge_score's F; empty-token texts score 0 with everything, so they are always novel)."""

    def __init__(self, threshold: float = 0.7, use_stemmer: bool = False, tokenizer: str = "rouge",
                 capacity: int = CAPACITY):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold!r}")
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
        self.threshold, self.use_stemmer, self.tokenizer = float(threshold), use_stemmer, tokenizer
        self.capacity = min(capacity, CAPACITY)
        self._chars: dict[str, str] = {}  # token -> its one-character code
        self._texts: list[str] = []
        self._codes: list[str] = []  # each entry as a string of token codes
        self._lens: list[int] = []  # token counts (a list: the hot loops index it)
        self._lens_np = np.zeros(1024, dtype=np.int32)  # the same, for numpy, grown by doubling
        # Prefix-filter index. An element is a token occurrence (the 2nd "the" of a text differs
        # from its 1st), so multiset overlap is plain set overlap.
        self._eid: dict[str, int] = {}
        self._postings = novelty_kernel.Postings()  # element id -> entries with it in their prefix
        self._full: list[array] = []  # element id -> all entries with it (its length: frequency)
        self._ids: list[array] = []  # entry -> its element ids, for re-indexing
        # The filter needs one fixed global element order; rarest first keeps common words out
        # of prefixes and posting lists short. Frequencies emerge as the pool grows, so order and
        # index are redone each time the pool grows 4x; elements new since sort first, newest first.
        self._rank: list[int] = []  # element id -> sort key, lower first
        self._next_rebuild = 256
        t = self.threshold - _SLACK
        self._half, self._ratio = t / 2, t / (2 - t)  # see `_prefix_len` and `_required`
        self._maxlen = 0
        self._req: dict[int, tuple[list[int], np.ndarray, np.ndarray]] = {}
        self._state, self._epoch = np.zeros(0, dtype=np.int32), 0  # the compiled filter's scratch space

    def __len__(self) -> int:
        return len(self._texts)

    def _encode(self, text: str) -> str:
        chars = self._chars
        toks = tokens(text, self.use_stemmer, self.tokenizer)
        try:
            return "".join([chars[t] for t in toks])
        except KeyError:  # new tokens: give them codes
            for t in toks:
                if t not in chars:
                    if len(chars) >= self.capacity:
                        # A code point per token is what makes the C++ LCS fast; growing past
                        # unicode would mean a slower representation for every pool, and ~1.1M
                        # distinct words is far beyond any instruction set, so: a clear stop.
                        raise UserError(
                            f"the novelty pool is full: {len(chars)} distinct words after {len(self._texts)} "
                            f"texts (the limit is {self.capacity}); deduplicate the data in parts, or check "
                            "the texts are not random strings (ids, hashes, base64)") from None
                    chars[t] = _char(len(chars))
            return "".join([chars[t] for t in toks])

    @staticmethod
    def _elements(code: str) -> list[str]:
        # The k-th occurrence of token c is the element c*k: distinct, hashable, cheap.
        out = list(code)
        if len(set(code)) < len(code):  # rename repeats only; the str methods run in C
            for c, count in Counter(code).items():
                at = code.index(c)
                for k in range(2, count + 1):
                    at = code.index(c, at + 1)
                    out[at] = c * k
        return out

    def _prefix_len(self, n: int) -> int:
        """How many of an n-token entry's elements (in global order) to index or probe. With
        o >= lcs > t(m+n)/2 and lcs <= min(m, n), a pair above the threshold shares more than
        ratio*n elements, so it shares one among the first n - need + 1 of each side."""
        need = max(1, int(self._ratio * n) + 1)
        return max(0, n - need + 1)

    def _required(self, m: int) -> tuple[list[int], np.ndarray, np.ndarray]:
        """For an m-token text, indexed by entry length n: how many probed posting lists an
        entry must be in to possibly score above the threshold. The pair must share
        need_mn = floor(t(m+n)/2) + 1 elements; the first need_mn - max(need_m, need_n) + 1 of
        them in global order lie in both prefixes. Lengths with F <= 2min(m,n)/(m+n) <= t: never.
        Also, per n, need_mn itself: the smallest LCS (and overlap) that can pass."""
        got = self._req.get(m)
        if got is None or len(got[0]) <= self._maxlen:
            never, h, r = 1 << 30, self._half, self._ratio
            need_m = max(1, int(r * m) + 1)
            need_mn = [int(h * (m + n)) + 1 for n in range(self._maxlen + 1)]
            req = [max(1, v - max(need_m, int(r * n) + 1) + 1) if r * m < n and n * r < m else never
                   for n, v in enumerate(need_mn)]
            if len(self._req) * len(req) > 1 << 22:  # bounded memory even for very long texts
                self._req.clear()
            # no LCS can pass where it would have to exceed the shorter text: a sentinel above m
            low = np.array([v if v <= min(m, n) else 1 << 20 for n, v in enumerate(need_mn)], dtype=np.int64)
            got = self._req[m] = (req, np.array(req), low)
        return got

    def _append(self, text: str, code: str, elements: list[str]) -> None:
        pos = len(self._texts)
        self._texts.append(text)
        self._codes.append(code)
        self._lens.append(len(code))
        if pos == len(self._lens_np):
            self._lens_np = np.concatenate([self._lens_np, np.zeros_like(self._lens_np)])
        self._lens_np[pos] = len(code)
        self._maxlen = max(self._maxlen, len(code))
        eid, full = self._eid, self._full
        ids = [eid.get(e) for e in elements]
        if None in ids:  # elements never seen before
            for k, e in enumerate(elements):
                if ids[k] is None:
                    ids[k] = eid[e] = len(full)
                    full.append(array("i"))
                    self._rank.append(-1 - ids[k])
            self._postings.grow_elements(len(full))
        for i in ids:
            full[i].append(pos)
        self._ids.append(array("i", ids))
        self._index(pos, ids)

    def _index(self, pos: int, ids: list[int]) -> None:
        ids.sort(key=self._rank.__getitem__)
        # C - 1 more than the prefix filter needs: the compiled path's windows reach that far
        self._postings.add(pos, len(ids), ids[: self._prefix_len(len(ids)) + novelty_kernel.C - 1])

    def _maybe_rebuild(self) -> None:
        # Only between public calls: recoding tokens would make codes held inside a call stale.
        if len(self._texts) >= self._next_rebuild:
            self._next_rebuild = 4 * len(self._texts)
            self._rebuild()

    def _rebuild(self) -> None:
        """Re-rank elements by how many entries hold them (rarest first) and re-index. Also
        recode tokens, most used first: rapidfuzz looks characters below 256 up in a flat table,
        others in a hash map, which makes full scans ~1.5x faster."""
        df, eid = [len(a) for a in self._full], self._eid
        by_use = sorted(self._chars.items(), key=lambda tc: -df[eid[tc[1]]] if tc[1] in eid else 0)
        table = {}
        for i, (tok, old) in enumerate(by_use):
            table[ord(old)] = self._chars[tok] = _char(i)
        self._codes = [c.translate(table) for c in self._codes]
        self._eid = {e.translate(table): i for e, i in eid.items()}  # elements: c or c*k
        self._rank = rank = [0] * len(df)
        for r, i in enumerate(sorted(range(len(df)), key=lambda i: (df[i], -i))):
            rank[i] = r
        self._postings = novelty_kernel.Postings()
        self._postings.grow_elements(len(df))
        for pos, ids in enumerate(self._ids):
            self._index(pos, ids.tolist())

    def add(self, text: str) -> None:
        """Add `text` unconditionally (seed tasks, or records rebuilt on resume)."""
        code = self._encode(text)
        self._append(text, code, self._elements(code))
        self._maybe_rebuild()

    def _hits(self, code: str, elements: list[str]) -> Ranked:
        """Every entry with F > threshold against `code`, ranked. Exact: the index cannot miss
        one, and F is recomputed the way rouge_score computes it."""
        m = len(code)
        p = self._prefix_len(m)
        get = self._eid.get
        known = [i for i in map(get, elements) if i is not None]
        unseen = len(elements) - len(known)  # in no entry: ordered first, they fill prefix slots
        if unseen >= p:
            return []
        known.sort(key=self._rank.__getitem__)
        req, req_np, low = self._required(m)
        if (novelty_kernel.candidates is not None and m <= novelty_kernel.MAX_QUERY
                and self._maxlen < novelty_kernel.MAX_ENTRY):
            cand = self._compiled_candidates(known[: p - unseen + novelty_kernel.C - 1], unseen, m, low)
            return self._verified(code, cand)
        lists = [self._postings.entries(i) for i in known[: p - unseen]]
        lens = self._lens
        if sum(map(len, lists)) < 300:  # a few candidates: plain Python beats numpy's overheads
            counts = Counter(chain.from_iterable(a.tolist() for a in lists))
            cand = [j for j, c in counts.items() if c >= req[lens[j]]]
        else:
            found = np.sort(np.concatenate(lists))
            starts = np.flatnonzero(np.concatenate(([True], found[1:] != found[:-1])))
            counts = np.diff(np.append(starts, len(found)))
            found = found[starts]
            cand = found[counts >= req_np[self._lens_np[found]]].tolist()
        return self._verified(code, cand)

    def _compiled_candidates(self, probed: list[int], unseen: int, m: int, low: np.ndarray) -> list[int]:
        """The entries that pass novelty_kernel's windowed count and positional test."""
        if len(self._state) < len(self._lens_np):  # scratch space, one word per entry
            self._state = np.zeros(len(self._lens_np), dtype=np.int32)
            self._epoch = 0
        self._epoch += 1
        if self._epoch > novelty_kernel.EPOCHS:  # stamps wrap: start from a clean slate
            self._state[:] = 0
            self._epoch = 1
        return self._postings.search(probed, unseen, m, self._lens_np, low, self._state, self._epoch)

    def _verified(self, code: str, cand: list[int]) -> Ranked:
        """The candidates with F > threshold, exactly, ranked."""
        if not cand:
            return []
        m, codes = len(code), self._codes
        # rapidfuzz's normalized Indel similarity is 2*LCS/(m+n), i.e. F up to rounding: a cutoff
        # a hair under the threshold keeps every possible hit, then F is redone exactly.
        found = process.extract(code, [codes[j] for j in cand], scorer=Indel.normalized_similarity,
                                score_cutoff=max(0.0, self.threshold - 1e-6), limit=None)
        hits = [(cand[j], _fmeasure(LCSseq.similarity(code, s), m, len(s))) for s, _, j in found]
        return sorted((h for h in hits if h[1] > self.threshold), key=_rank_key)

    def _scores(self, code: str, positions: np.ndarray) -> np.ndarray:
        """Exact F of `code` against the entries at `positions`: numpy float64 does rouge_score's
        IEEE operations in the same order, so the values are bit-identical to `_fmeasure`'s."""
        if not len(positions):
            return np.zeros(0)
        lcs = process.cdist([code], [self._codes[j] for j in positions.tolist()], scorer=LCSseq.similarity,
                            dtype=np.int32, workers=1)[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            precision, recall = lcs / self._lens_np[positions], lcs / len(code)
            f = 2 * precision * recall / (precision + recall)
        return np.where(lcs > 0, f, 0.0)

    def _nearest(self, code: str, elements: list[str], k: int) -> Ranked:
        """The k best entries, exactly. LCS <= o, the tokens (with repeats) two texts share, so
        F <= 2o/(m+n); o for every entry is one numpy count over the full posting lists. Exact F
        for the entries with the best bounds gives a k-th best score; only entries whose bound
        reaches it can be in the top k (typically ~1% of the pool), the others are never scored."""
        n_pool, m = len(self._codes), len(code)
        if m == 0:  # no tokens: F = 0 with every entry, so the oldest k
            return [(j, 0.0) for j in range(min(k, n_pool))]
        ids = [i for i in map(self._eid.get, elements) if i is not None]
        o = np.bincount(np.concatenate([np.frombuffer(self._full[i], dtype=np.int32) for i in ids]),
                        minlength=n_pool) if ids else np.zeros(n_pool, dtype=np.int64)
        bound = 2 * o / (m + self._lens_np[:n_pool])  # 0 exactly where F = 0 (no shared token)
        sample = max(2 * k, 32)
        kth = 0.0
        if n_pool > sample:
            top = np.argpartition(-bound, sample - 1)[:sample]
            kth = np.partition(self._scores(code, top), sample - k)[sample - k]
        pos = np.flatnonzero(bound >= kth - _SLACK) if kth > 0 else np.flatnonzero(o)
        f = self._scores(code, pos)
        order = np.lexsort((pos, -f))[:k]  # best first, ties: earliest added first
        ranked = list(zip(pos[order].tolist(), f[order].tolist()))
        if len(ranked) < k:  # fewer than k entries share a token: F = 0, oldest first
            ranked += [(j, 0.0) for j in np.flatnonzero(o == 0)[: k - len(ranked)].tolist()]
        return ranked

    def _check(self, code: str, elements: list[str], k: int, scan: bool = True) -> tuple[bool, Ranked]:
        hits = self._hits(code, elements)
        if k == 0 or len(hits) >= k or not scan:
            # Any entry outside `hits` scores <= threshold < every hit: these are the top k.
            return not hits, hits[:k]
        return not hits, self._nearest(code, elements, k)

    def _neighbours(self, ranked: Ranked) -> Neighbours:
        return [(self._texts[j], f) for j, f in ranked]

    def check(self, text: str, k: int = 5) -> tuple[bool, Neighbours]:
        """(novel?, the k most similar entries with their F, best first). Does not add.
        k=0 skips the neighbour search: the fastest path."""
        code = self._encode(text)
        novel, ranked = self._check(code, self._elements(code), k)
        return novel, self._neighbours(ranked)

    def check_and_add(self, text: str, k: int = 5, scan: bool = True) -> tuple[bool, Neighbours]:
        """`check`, then add `text` if it is novel. scan=False: neighbours only from entries above
        the threshold (all that a dropped text needs), skipping the search below it."""
        code = self._encode(text)
        elements = self._elements(code)
        novel, ranked = self._check(code, elements, k, scan)
        if novel:
            self._append(text, code, elements)
            self._maybe_rebuild()
        return novel, self._neighbours(ranked)

    def filter_batch(self, texts: list[str], k: int = 5) -> list[tuple[bool, Neighbours]]:
        """`check_and_add` of each text in order: each is checked against the pool and the texts
        of the batch kept before it, which are added as they pass."""
        return [self.check_and_add(t, k) for t in texts]
