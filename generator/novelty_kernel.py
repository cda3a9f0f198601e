"""The novelty filter's candidate count, compiled with numba (which vLLM already brings).

`NoveltyPool._hits` gathers the posting lists of a text's prefix elements; every entry in them is
counted, and an entry survives only if (a) it is in enough lists (the prefix filter's count, as
before) and (b) its shared elements are not too late in either text: the K-th shared element in
the global order has at most m - L non-shared elements of the query before it (at most n - L of
the entry's), where L is the smallest LCS that can pass the threshold for the pair of lengths
(PPJoin's positional filter; shared elements found in both prefixes are the first K of all shared
ones, so the last one found decides). On instruction-like text, (b) removes ~9 in 10 of the
entries (a) lets through, before any LCS is computed.

Counting is one pass over the rows with a scratch counter per entry: in Python or numpy that pass
(a sort of every row) is what made the filter grow quadratically; compiled, it costs ~1 ns a row.
Without numba, `novelty.py` keeps its numpy path (same decisions, slower)."""

from __future__ import annotations

import numpy as np

try:  # pragma: no cover - numba is a declared dependency; the fallback is for odd platforms
    import numba
except ImportError:  # pragma: no cover
    numba = None


def _candidates(ents, js, offs, i0, m, lens, lcs_min, req, req_min, state, epoch):
    """Entries (pool positions) that pass the count and positional filters. `ents`/`js`: the
    concatenated posting lists (entry, element's position in that entry's order); list k holds
    the query's element at position i0 + k. `state`: one int64 per entry, stamped with `epoch`
    (this query's number): a stamp from an earlier query reads as zero, so nothing is reset between
    queries, and each row costs one read and one write of one word. Below the stamp: the number
    of lists the entry was found in, and the query / entry positions of the last one (16 bits
    each). Only an entry found in `req_min` lists (no length needs fewer) is looked at again."""
    touched = np.empty(len(ents), np.int32)
    nt = 0
    stamp = np.int64(epoch) << 48
    for k in range(len(offs) - 1):
        i = np.int64(i0 + k) << 16
        for r in range(offs[k], offs[k + 1]):
            e = ents[r]
            s = state[e]
            found = np.int64(1) if (s >> 48) != epoch else ((s >> 32) & 0xFFFF) + 1
            state[e] = stamp | (found << 32) | i | js[r]
            if found == req_min:
                touched[nt] = e
                nt += 1
    out = np.empty(nt, np.int32)
    n_out = 0
    for t in range(nt):
        e = touched[t]
        s = state[e]
        found = (s >> 32) & 0xFFFF
        n = lens[e]
        if found < req[n]:
            continue
        low = lcs_min[n]
        if ((s >> 16) & 0xFFFF) - found + 1 > m - low or (s & 0xFFFF) - found + 1 > n - low:
            continue
        out[n_out] = e
        n_out += 1
    return out[:n_out]


# Positions and counts must fit their 16 bits: the caller uses the kernel only while the query
# and every pool entry are shorter than this (else the numpy path); stamps wrap after EPOCHS.
MAX_TOKENS = 0xFFFF
EPOCHS = 0x7FFF
candidates = numba.njit(cache=True, nogil=True)(_candidates) if numba is not None else None
