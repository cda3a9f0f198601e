"""The novelty filter's candidate search, compiled with numba (which vLLM already brings).

Why: `NoveltyPool._hits` must find every pool entry whose ROUGE-L F with a text can exceed the
threshold. Its prefix filter (rarest elements first) gathers the posting lists of the text's
rarest elements; on instruction-like text (a small common vocabulary) those lists hold ~1% of the
pool, so counting them in Python or numpy made the filter grow quadratically. Here each row of
those lists costs a few nanoseconds and most rows are not even counted.

The test, for a query of m tokens and an entry of n: F > t needs an LCS, hence a shared-element
count, of at least L = L(m, n). Take both texts' elements in the one global order; the c-th
shared element has at most m - L non-shared query elements before it, so it sits at query
position i < m - L + c and entry position j < n - L + c. Hence a hit has at least c = min(C, L)
shared elements inside those two windows, which are exactly the first ones shared, and the last
one found (the K-th) still satisfies i - K + 1 <= m - L and j - K + 1 <= n - L (PPJoin's
positional filter). Windows tailored to each length pair, rather than one prefix per text for
the worst partner length, are what make this strong: on the benchmark stream ~2 candidates per
query survive (37 with one prefix per text), each then scored exactly with rapidfuzz's LCS.

Entries index their first prefix_len(n) + C - 1 elements (enough for any partner length), in one
run per (element, bucket of entry lengths) of an int64 arena that the compiled code reads
directly; a query reads, at each of its positions, only the runs of lengths that can pass there,
and a posting carries (entry, n, j), so rows outside the windows are skipped without touching the
entry's state. Without numba, `novelty.py` keeps its numpy path (the same decisions, slower)."""

from __future__ import annotations

import numpy as np

try:  # pragma: no cover - numba is a declared dependency; the fallback is for odd platforms
    import numba
except ImportError:  # pragma: no cover
    numba = None

C = 3  # shared elements required inside the windows (where L allows): 2-3 is the sweet spot


def _length_buckets(limit: int = 256, ratio: float = 1.1) -> np.ndarray:
    """Length -> bucket: each element's postings are kept in one run per bucket of entry lengths,
    so a query reads only the runs of lengths that can pass at each of its positions. Narrow
    (about 10% wide) buckets; every length from `limit` on shares the last one."""
    table, b, edge = np.zeros(limit + 1, dtype=np.int64), 0, 1
    for n in range(limit + 1):
        if n > edge:
            b, edge = b + 1, max(edge + 1, int(edge * ratio))
        table[n] = b
    return table


BUCKET = _length_buckets()
NB = int(BUCKET[-1]) + 1


def _append_entry(arena, start, length, cap, top, ids, pos, n, bucket):
    """Post entry `pos` (n tokens) under each element of `ids` (its prefix, in global order).
    The postings of (element, length bucket) are one run of the arena, under key
    element * NB + bucket; a full run moves to the arena's end with twice the room (amortized
    O(1) a posting). Returns 0, or, changing nothing, the arena size it would need (the caller
    grows the arena and calls again)."""
    need = top[0]
    for e in ids:
        key = e * NB + bucket
        if length[key] == cap[key]:
            need += max(4, 2 * cap[key])
    if need > len(arena):
        return need
    for j in range(len(ids)):
        e = ids[j] * NB + bucket
        if length[e] == cap[e]:
            room = max(4, 2 * cap[e])
            at = top[0]
            arena[at: at + length[e]] = arena[start[e]: start[e] + length[e]]
            start[e], cap[e], top[0] = at, room, at + room
        arena[start[e] + length[e]] = (np.int64(pos) << 32) | (np.int64(n) << 16) | min(j, 0xFFFF)
        length[e] += 1
    return 0


def _candidates(probed, i0, m, arena, start, length, lens, lcs_min, state, epoch, bucket):
    """Entries (pool positions) that pass the windowed count and the positional test.

    `probed`: the query's elements (ids) to look up; the k-th is at query position i0 + k. Each
    posting is (entry << 32 | n << 16 | j): the entry, its length, and the element's position in
    that entry's order. `lcs_min[n]`: L(m, n), or more than m where no LCS can pass. `state`:
    one int32 per entry, stamped with `epoch` (a stamp from an earlier query reads as zero, so
    nothing is reset between queries): 8 bits each for the stamp, the shared elements found, and
    the query / entry positions of the last one (j capped at 255: only looser)."""
    # reach[b]: query positions i < reach[b] can hold a counted element for some length in bucket b
    reach = np.zeros(NB, np.int64)
    for n in range(1, len(lcs_min)):
        low = lcs_min[n]
        b = bucket[min(n, len(bucket) - 1)]
        reach[b] = max(reach[b], m - low + min(C, low))
    total = 0
    for k in range(len(probed)):
        for b in range(NB):
            if i0 + k < reach[b]:
                total += length[probed[k] * NB + b]
    touched = np.empty(total, np.int32)
    nt = 0
    stamp = np.int32(epoch) << 24
    for kb in range(len(probed) * NB):  # (query position, length bucket) pairs
        k, b = kb // NB, kb % NB
        i = i0 + k
        if i >= reach[b]:
            continue
        e = probed[k] * NB + b
        for r in range(start[e], start[e] + length[e]):
            v = arena[r]
            j, n = v & 0xFFFF, (v >> 16) & 0xFFFF
            low = lcs_min[n]
            need = min(C, low)
            if i >= m - low + need or j >= n - low + need:
                continue
            ent = v >> 32
            s = state[ent]
            found = 1 if (s >> 24) != epoch else ((s >> 16) & 0xFF) + 1
            state[ent] = stamp | (found << 16) | (i << 8) | min(j, 255)
            if found == need:
                touched[nt] = ent
                nt += 1
    out = np.empty(nt, np.int32)
    n_out = 0
    for t in range(nt):
        ent = touched[t]
        s = state[ent]
        found = (s >> 16) & 0xFF
        n = lens[ent]
        low = lcs_min[n]
        if ((s >> 8) & 0xFF) - found + 1 > m - low or (s & 0xFF) - found + 1 > n - low:
            continue
        out[n_out] = ent
        n_out += 1
    return out[:n_out]


# What fits the packing: queries of up to MAX_QUERY tokens (counts and positions in 8 bits), pool
# entries of up to MAX_ENTRY tokens (n in 15 bits of a posting); others take the numpy path.
# Stamps take 7 bits (the sign bit stays clear): the state is cleared every EPOCHS queries.
MAX_QUERY = 250
MAX_ENTRY = 0x7FFF
EPOCHS = 127
if numba is not None:
    candidates = numba.njit(cache=True, nogil=True)(_candidates)
    append_entry = numba.njit(cache=True, nogil=True)(_append_entry)
else:  # pragma: no cover - plain Python: the same results, only slow
    candidates, append_entry = None, _append_entry


class Postings:
    """Element id -> the entries holding it in their indexed prefix, in one int64 arena that the
    compiled search reads directly (no per-query gathering of lists in Python)."""

    def __init__(self):
        self.arena = np.zeros(1 << 16, dtype=np.int64)
        self.start = np.zeros(1024 * NB, dtype=np.int64)
        self.length = np.zeros(1024 * NB, dtype=np.int64)
        self.cap = np.zeros(1024 * NB, dtype=np.int64)
        self.top = np.zeros(1, dtype=np.int64)

    def grow_elements(self, count: int) -> None:
        if count * NB > len(self.start):
            size = max(count * NB, 2 * len(self.start))
            self.start, self.length, self.cap = (np.concatenate([a, np.zeros(size - len(a), dtype=np.int64)])
                                                 for a in (self.start, self.length, self.cap))

    def add(self, pos: int, n: int, ids: list[int]) -> None:
        ids_np = np.array(ids, dtype=np.int64)
        while need := append_entry(self.arena, self.start, self.length, self.cap, self.top, ids_np, pos,
                                   min(n, MAX_ENTRY), BUCKET[min(n, len(BUCKET) - 1)]):
            self.arena = np.concatenate([self.arena, np.zeros(max(need, 2 * len(self.arena)) - len(self.arena),
                                                              dtype=np.int64)])

    def entries(self, e: int) -> np.ndarray:
        """The entries posted under element e (int32, ascending), for the numpy path."""
        runs = [self.arena[s: s + k] >> 32 for s, k in zip(self.start[e * NB: (e + 1) * NB].tolist(),
                                                           self.length[e * NB: (e + 1) * NB].tolist()) if k]
        return np.sort(np.concatenate(runs)).astype(np.int32) if runs else np.zeros(0, dtype=np.int32)

    def search(self, probed: list[int], i0: int, m: int, lens: np.ndarray, low: np.ndarray, state: np.ndarray,
               epoch: int) -> list[int]:
        return candidates(np.array(probed, dtype=np.int64), i0, m, self.arena, self.start, self.length, lens, low,
                          state, epoch, BUCKET).tolist()
