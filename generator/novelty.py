"""ROUGE-L novelty filter: keep a new instruction only if no kept one is too similar to it.

Self-Instruct and Stanford Alpaca drop a generated instruction when its ROUGE-L F-measure against
any instruction already in the pool is above 0.7, scoring every pair with rouge_score's
pure-Python LCS table. That is quadratic in the pool and costs tens of microseconds per pair.
This module makes the *same* keep/drop decisions, bit for bit, far faster:

* Tokens come from rouge_score's own tokenizer, so "the same words" means exactly what it means
  there. Each distinct token gets one unicode character, so an instruction becomes a short string
  and rapidfuzz's bit-parallel C++ LCS scores a pair in nanoseconds.
* An inverted index with prefix filtering (as in set-similarity joins) finds the few pool entries
  that *can* score above the threshold, so most pairs are never scored at all.
* Every decision is taken on the F-measure recomputed in rouge_score's own float arithmetic from
  the exact integer LCS length, so a pair at F == threshold behaves exactly as in rouge_score.

Top-k neighbours (k > 0) need scores of entries below the threshold too, which no threshold index
can give: those come from a full scan (rapidfuzz `cdist`, C++, multithreaded across a batch).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from array import array
from pathlib import Path

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Indel, LCSseq
from rouge_score import tokenize as rouge_tokenize

from generator.errors import UserError

Neighbours = list[tuple[str, float]]

# Prefix bounds are derived with the threshold lowered by this much, so float rounding in the
# bound can only make the index return *more* candidates, never miss one. Exact F decides.
_SLACK = 1e-9
# float32 rounding margin when ranking on rapidfuzz's normalized similarity (see `_ranked`).
_PROXY_SLACK = 1e-5


class _MemoStemmer:
    """nltk's Porter stemmer (what rouge_score uses) behind a cache: stemming is a pure function
    of the word and costs ~10 us, and an instruction stream repeats the same words endlessly."""

    def __init__(self):
        from nltk.stem import porter

        self._stem = porter.PorterStemmer().stem
        self._cache: dict[str, str] = {}

    def stem(self, word: str) -> str:
        out = self._cache.get(word)
        if out is None:
            out = self._cache[word] = self._stem(word)
        return out


_STEMMER: _MemoStemmer | None = None


def tokens(text: str, use_stemmer: bool = False) -> list[str]:
    """rouge_score's tokens for `text` (lowercase, [a-z0-9] runs, optional Porter stems)."""
    global _STEMMER
    if use_stemmer and _STEMMER is None:
        _STEMMER = _MemoStemmer()
    return rouge_tokenize.tokenize(text, _STEMMER if use_stemmer else None)


def _fmeasure(lcs: int, m: int, n: int) -> float:
    """rouge_score's F for an LCS of `lcs` tokens between texts of m and n tokens, computed with
    the same float operations in the same order (so the result is bit-identical)."""
    if lcs == 0:  # also covers empty texts, where rouge_score returns 0
        return 0.0
    precision, recall = lcs / n, lcs / m
    return 2 * precision * recall / (precision + recall)


def _char(i: int) -> str:
    # Surrogate code points cannot stand alone in a str that C code reads; skip over them.
    return chr(i + 0x800 if i >= 0xD800 else i)


_MAX_TOKENS = 0x110000 - 0x800


def rouge_l(a: str, b: str, use_stemmer: bool = False) -> float:
    """ROUGE-L F-measure of two texts, equal to rouge_score's
    `RougeScorer(['rougeL'], use_stemmer).score(a, b)['rougeL'].fmeasure`."""
    ta, tb = tokens(a, use_stemmer), tokens(b, use_stemmer)
    vocab = {t: _char(i) for i, t in enumerate(dict.fromkeys(ta + tb))}
    lcs = LCSseq.similarity("".join(map(vocab.get, ta)), "".join(map(vocab.get, tb)))
    return _fmeasure(lcs, len(ta), len(tb))


class NoveltyPool:
    """The instructions kept so far, and the test "is this new one novel enough to keep?"

    novel  <=>  no pool entry has rouge_score ROUGE-L F > threshold with it.
    """

    def __init__(self, threshold: float = 0.7, use_stemmer: bool = False, workers: int = 1):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold!r}")
        self.threshold = float(threshold)
        self.use_stemmer = use_stemmer
        # rapidfuzz threads for batch scans (-1 = all cores). One by default: 2 threads make a
        # scan ~1.7x faster on an idle 2-core machine but several times slower on a busy one
        # (say beside a CPU vLLM teacher), as rapidfuzz's workers wait on each other.
        self.workers = workers
        self._chars: dict[str, str] = {}  # token -> its one-character code
        self._texts: list[str] = []
        self._codes: list[str] = []  # each entry as a string of token codes
        self._lens = array("i")  # token counts
        # Prefix-filter index. An "element" is a token occurrence: the 2nd "the" of a text is a
        # different element from its 1st, so multiset overlap becomes plain set overlap.
        self._eid: dict[str, int] = {}
        self._postings: list[array] = []  # element id -> positions of entries whose prefix has it
        self._df = array("i")  # element id -> how many entries contain it
        # The prefix filter needs one fixed global order of elements; rarest first keeps the
        # common words out of prefixes and their posting lists short. Frequencies are only known
        # as the pool grows, so the order is redone (and the index rebuilt) at doubling sizes;
        # in between, elements first seen after the last rebuild sort first, newest first.
        self._rank = array("q")  # element id -> sort key (lower = earlier)
        self._next_rebuild = 256
        # Minimal overlap a pair needs, from F > t: o >= lcs > t(m+n)/2 and lcs <= min(m, n).
        t = self.threshold - _SLACK
        self._ratio = t / (2 - t)

    def __len__(self) -> int:
        return len(self._texts)

    # --- encoding ---------------------------------------------------------------------------

    def _encode(self, text: str) -> str:
        chars = self._chars
        toks = tokens(text, self.use_stemmer)
        try:
            return "".join([chars[t] for t in toks])
        except KeyError:
            for t in toks:
                if t not in chars:
                    if len(chars) >= _MAX_TOKENS:
                        raise RuntimeError("more distinct tokens than unicode code points") from None
                    chars[t] = _char(len(chars))
            return "".join([chars[t] for t in toks])

    @staticmethod
    def _elements(code: str) -> list[str]:
        # The k-th occurrence of token c is the element c*k: distinct, hashable, cheap.
        out = list(code)
        if len(set(code)) < len(code):  # only repeated tokens need renaming; str ops run in C
            for c, count in Counter(code).items():
                at = -1
                for k in range(1, count + 1):
                    at = code.index(c, at + 1)
                    if k > 1:
                        out[at] = c * k
        return out

    def _prefix_len(self, n: int) -> int:
        """How many of an n-token entry's elements (in global order) must be indexed/probed:
        a pair above the threshold shares at least `need` elements, so it shares one among the
        first n - need + 1 of each side (the prefix-filter principle)."""
        need = max(1, int(self._ratio * n) + 1)
        return max(0, n - need + 1)

    # --- adding -----------------------------------------------------------------------------

    def _append(self, text: str, code: str, elements: list[str] | None = None) -> None:
        pos = len(self._texts)
        self._texts.append(text)
        self._codes.append(code)
        self._lens.append(len(code))
        eid, df, rank = self._eid, self._df, self._rank
        ids = []
        for e in self._elements(code) if elements is None else elements:
            i = eid.get(e)
            if i is None:
                i = eid[e] = len(df)
                df.append(0)
                rank.append(-1 - i)
                self._postings.append(array("i"))
            df[i] += 1
            ids.append(i)
        self._index(pos, ids)

    def _maybe_rebuild(self) -> None:
        # Called only between public calls: a rebuild recodes tokens, which would leave codes
        # already computed inside a call (a batch) stale.
        if len(self._texts) >= self._next_rebuild:
            self._next_rebuild = 2 * len(self._texts)
            self._rebuild()

    def _index(self, pos: int, ids: list[int]) -> None:
        ids.sort(key=self._rank.__getitem__)
        postings = self._postings
        for i in ids[: self._prefix_len(len(ids))]:
            postings[i].append(pos)

    def _rebuild(self) -> None:
        """Re-rank elements by how many entries contain them (rarest first) and re-index.
        Also recode tokens, most common first: rapidfuzz looks characters below 256 up in a flat
        table and the others in a hash map, so this makes full scans ~1.5x faster."""
        df, eid = self._df, self._eid
        by_use = sorted(self._chars.items(), key=lambda tc: -df[eid[tc[1]]] if tc[1] in eid else 0)
        table = {}
        for i, (tok, old) in enumerate(by_use):
            table[ord(old)] = self._chars[tok] = _char(i)
        self._codes = [c.translate(table) for c in self._codes]
        self._eid = {e.translate(table): i for e, i in eid.items()}  # elements are c or c*k
        order = sorted(range(len(df)), key=lambda i: (df[i], -i))
        rank = array("q", bytes(8 * len(df)))
        for r, i in enumerate(order):
            rank[i] = r
        self._rank = rank
        self._postings = [array("i") for _ in df]
        eid = self._eid
        for pos, code in enumerate(self._codes):
            self._index(pos, [eid[e] for e in self._elements(code)])

    def add(self, text: str) -> None:
        """Add `text` unconditionally (seed tasks, or records rebuilt on resume)."""
        self._append(text, self._encode(text))
        self._maybe_rebuild()

    # --- checking ---------------------------------------------------------------------------

    def _hits(self, code: str, elements: list[str] | None = None) -> list[tuple[int, float]]:
        """Every pool entry with F > threshold against `code`, as (position, F), best first
        (ties: earliest added first). Exact: the index cannot miss one, F is recomputed."""
        m = len(code)
        p = self._prefix_len(m)
        if p == 0:
            return []
        eid, postings = self._eid, self._postings
        known, unseen = [], 0
        for e in self._elements(code) if elements is None else elements:
            i = eid.get(e)
            if i is None:
                unseen += 1  # no entry has it: order it first, it uses up a prefix slot for free
            else:
                known.append(i)
        if unseen >= p:
            return []
        known.sort(key=self._rank.__getitem__)
        lists = [postings[i] for i in known[: p - unseen] if postings[i]]
        # Length filter: F <= 2*min(m, n)/(m+n), so n must lie strictly between these bounds.
        r, lens = self._ratio, self._lens
        n_min = int(r * m) + 1  # smallest integer n with n > r*m (r*m >= 0 rounds down)
        n_max = int(m / r) if r > 0 else m * 1000  # n*r < m; the bound is only a speed-up
        n_max -= n_max * r >= m
        if sum(map(len, lists)) < 300:  # few candidates: plain Python beats numpy's call costs
            seen: set[int] = set()
            for a in lists:
                seen.update(a)
            cand = [j for j in seen if n_min <= lens[j] <= n_max]
        else:
            found = np.concatenate([np.frombuffer(a, dtype=np.int32) for a in lists])
            n = np.frombuffer(lens, dtype=np.int32)[found]
            found = found[(n >= n_min) & (n <= n_max)]
            found.sort()  # then drop repeats (cheaper than np.unique's hashing at these sizes)
            cand = found[np.concatenate(([True], found[1:] != found[:-1]))].tolist()
        if not cand:
            return []
        codes = self._codes
        choices = [codes[j] for j in cand]
        # rapidfuzz's normalized Indel similarity is 2*LCS/(m+n), ROUGE-L's F up to rounding;
        # a cutoff a hair under the threshold keeps every possible hit, and F is redone exactly.
        found = process.extract(code, choices, scorer=Indel.normalized_similarity,
                                score_cutoff=max(0.0, self.threshold - 1e-6), limit=None)
        hits = []
        for s, _, j in found:
            f = _fmeasure(LCSseq.similarity(code, s), m, len(s))
            if f > self.threshold:
                hits.append((cand[j], f))
        hits.sort(key=_rank_key)
        return hits

    def _ranked(self, codes: list[str], k: int) -> list[list[tuple[int, float]]]:
        """For each of `codes`, the k best pool entries as (position, exact F), best first, ties
        by earliest added. One multithreaded rapidfuzz scan for all of them; exact F is only
        computed for the few entries that can make the top k."""
        n = len(self._codes)
        out: list[list[tuple[int, float]]] = [[] for _ in codes]
        if n == 0 or k <= 0:
            return out
        # float32 2*LCS/(m+n): a proxy with F's order. Distinct values of 2l/(m+n) differ by far
        # more than float32 error, so everything within _PROXY_SLACK of the k-th best is kept
        # and re-ranked on exact F, which settles ties the way rouge_score's floats do.
        # cdist spreads *rows* over threads, so one row gets only the thread start-up cost.
        sim = process.cdist(codes, self._codes, scorer=Indel.normalized_similarity, dtype=np.float32,
                            workers=self.workers if len(codes) > 1 else 1)
        if n > k:
            kth = np.partition(sim, n - k, axis=1)[:, n - k]
            rows, cols = np.nonzero((sim >= (kth - _PROXY_SLACK)[:, None]) & (sim > 0))
        else:
            rows, cols = np.nonzero(sim > 0)
        bounds = np.searchsorted(rows, np.arange(len(codes) + 1))
        pool = self._codes
        for r, code in enumerate(codes):
            m = len(code)
            if m == 0:  # no tokens: F = 0 with everything (rapidfuzz would say 1.0 for two empties)
                out[r] = [(pos, 0.0) for pos in range(min(k, n))]
                continue
            sel = cols[bounds[r]: bounds[r + 1]].tolist()
            ranked = [(pos, _fmeasure(LCSseq.similarity(code, pool[pos]), m, len(pool[pos]))) for pos in sel]
            ranked.sort(key=_rank_key)
            ranked = ranked[:k]
            if len(ranked) < k:  # fewer than k entries share a token: the rest are F = 0, oldest first
                taken = set(sel)
                ranked += [(pos, 0.0) for pos in range(n) if pos not in taken][: k - len(ranked)]
            out[r] = ranked
        return out

    def _neighbours(self, ranked: list[tuple[int, float]]) -> Neighbours:
        return [(self._texts[pos], f) for pos, f in ranked]

    def _check(self, code: str, k: int, elements=None) -> tuple[bool, list[tuple[int, float]]]:
        hits = self._hits(code, elements)
        if k == 0 or len(hits) >= k:
            # Every entry outside `hits` scores <= threshold < every hit, so these are the top k.
            return not hits, hits[:k]
        # Below k hits the neighbours include entries under the threshold: scan the pool.
        return not hits, self._ranked([code], k)[0]

    def check(self, text: str, k: int = 5) -> tuple[bool, Neighbours]:
        """(novel?, the k most similar pool entries with their F, best first). Does not add.
        k=0 skips the neighbour search and is the fastest path."""
        novel, ranked = self._check(self._encode(text), k)
        return novel, self._neighbours(ranked)

    def check_and_add(self, text: str, k: int = 5) -> tuple[bool, Neighbours]:
        """`check`, then add `text` to the pool if it is novel."""
        code = self._encode(text)
        elements = self._elements(code)
        novel, ranked = self._check(code, k, elements)
        out = self._neighbours(ranked)
        if novel:
            self._append(text, code, elements)
            self._maybe_rebuild()
        return novel, out

    def filter_batch(self, texts: list[str], k: int = 5) -> list[tuple[bool, Neighbours]]:
        """`check_and_add` over `texts` in order: each one is checked against the pool and the
        earlier texts of the batch that were kept. With k > 0 the whole batch is scored against
        the pool in one multithreaded scan, much cheaper than one scan per text."""
        codes = [self._encode(t) for t in texts]
        if k == 0 or not texts:
            results = []
            for text, code in zip(texts, codes):
                elements = self._elements(code)
                novel = not self._hits(code, elements)
                if novel:
                    self._append(text, code, elements)
                results.append((novel, []))
            self._maybe_rebuild()
            return results
        base = len(self._codes)
        ranked_rows = self._ranked(codes, k)
        results = []
        for text, code, ranked in zip(texts, codes, ranked_rows):
            # Entries kept earlier in this batch came after the scan: score them one by one.
            m = len(code)
            ranked = ranked + [(pos, _fmeasure(LCSseq.similarity(code, self._codes[pos]), m,
                                               len(self._codes[pos])))
                               for pos in range(base, len(self._codes))]
            ranked.sort(key=_rank_key)
            novel = not ranked or ranked[0][1] <= self.threshold
            results.append((novel, self._neighbours(ranked[:k])))
            if novel:
                self._append(text, code)
        self._maybe_rebuild()
        return results


def _rank_key(hit: tuple[int, float]) -> tuple[float, int]:
    return -hit[1], hit[0]


# --- whole datasets and the `sprout dedup` command ---------------------------------------------


def dedup_records(records: list[dict], threshold: float = 0.7, key: str = "instruction",
                  use_stemmer: bool = False) -> tuple[list[dict], list[dict]]:
    """Drop records whose `key` text has ROUGE-L F > threshold with an earlier kept record.
    Returns (kept, dropped), both in input order; kept records are the input dicts, dropped
    ones are copies with "_nearest": {"instruction": nearest kept text, "rouge_l": its F}."""
    pool = NoveltyPool(threshold, use_stemmer)
    kept, dropped = [], []
    for i, rec in enumerate(records):
        text = rec.get(key) if isinstance(rec, dict) else None
        if not isinstance(text, str):
            what = "is not a JSON object" if not isinstance(rec, dict) else (
                f"has no {key!r} field" if key not in rec else f"field {key!r} is not a string")
            raise UserError(f"record {i + 1} {what}")
        code = pool._encode(text)
        elements = pool._elements(code)
        hits = pool._hits(code, elements)  # a dropped text's nearest entry is its best hit
        if hits:
            pos, f = hits[0]
            dropped.append({**rec, "_nearest": {"instruction": pool._texts[pos], "rouge_l": f}})
        else:
            pool._append(text, code, elements)
            pool._maybe_rebuild()
            kept.append(rec)
    return kept, dropped


def _read_jsonl(path: Path, key: str) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    records = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {no}: not valid JSON ({e.msg}); a torn last line "
                            f"from an interrupted run can be deleted") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path} line {no}: expected a JSON object, got {type(rec).__name__}")
        if key not in rec:
            raise UserError(f"{path} line {no}: no {key!r} field (choose the field with --key)")
        if not isinstance(rec[key], str):
            raise UserError(f"{path} line {no}: field {key!r} is not a string")
        records.append(rec)
    return records


def dedup_file(in_path, out_path, threshold: float = 0.7, key: str = "instruction",
               use_stemmer: bool = False) -> tuple[int, int]:
    """JSONL in, JSONL out (kept records, input order). Returns (kept, dropped) counts."""
    records = _read_jsonl(Path(in_path), key)  # read all first: out_path may be in_path
    kept, dropped = dedup_records(records, threshold, key, use_stemmer)
    out = Path(out_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in kept:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        tmp.replace(out)  # a crash mid-write leaves the old file, never half a dataset
    except OSError as e:
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None
    return len(kept), len(dropped)


def add_dedup_args(p) -> None:
    """Flags of `sprout dedup` (argparse parser `p`)."""
    p.add_argument("input", metavar="IN", help="JSONL dataset to read")
    p.add_argument("output", metavar="OUT", help="JSONL file to write the kept records to")
    p.add_argument("--threshold", type=float, help="drop when ROUGE-L F > this (default 0.7)")
    p.add_argument("--key", help="field holding the text to compare (default instruction)")
    p.add_argument("--stem", action="store_true", default=None,
                   help="Porter-stem tokens before comparing (rouge_score's use_stemmer)")
    p.set_defaults(func=run_dedup)


@dataclasses.dataclass
class DedupConfig:
    threshold: float = 0.7
    key: str = "instruction"
    stem: bool = False


def run_dedup(args) -> int:
    from generator.config import load_config

    cfg = load_config(DedupConfig, getattr(args, "config", None), vars(args))
    if not 0.0 <= cfg.threshold <= 1.0:  # also rejects NaN
        raise UserError(f"--threshold must be between 0 and 1, got {cfg.threshold}")
    kept, dropped = dedup_file(args.input, args.output, cfg.threshold, cfg.key, cfg.stem)
    print(f"kept {kept} of {kept + dropped} (dropped {dropped} near-duplicates, "
          f"ROUGE-L > {cfg.threshold:g})")
    return 0
