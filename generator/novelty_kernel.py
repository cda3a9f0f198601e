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


def _candidates(ents, jn, offs, i0, m, lens, lcs_min, req, req_min, state, epoch):
    """Entries (pool positions) that pass the count and positional filters.

    `ents` / `jn`: the concatenated posting lists: the entry, and (j | n << 16) where j is the
    element's position in that entry's order and n the entry's length; list k holds the query's
    element at position i = i0 + k. `state`: one int32 per entry, stamped with `epoch` (a stamp
    from an earlier query reads as zero, so nothing is reset between queries): 8 bits each for
    the stamp, the lists the entry was found in, and the query / entry positions of the last one
    (j capped at 255, which only loosens the test). A row is not counted at all where its entry
    cannot pass: a length that cannot reach the threshold, or a shared element already too late
    in either text (the c-th shared one has c <= min(i, j) + 1, so at least i - j, resp. j - k,
    non-shared elements precede it); the row's entry is then no hit, whatever else it shares."""
    touched = np.empty(len(ents), np.int32)
    nt = 0
    stamp = np.int32(epoch) << 24
    for k in range(len(offs) - 1):
        i = i0 + k
        for r in range(offs[k], offs[k + 1]):
            packed = jn[r]
            j, n = packed & 0xFFFF, packed >> 16
            low = lcs_min[n]
            if req[n] > m or j - k > n - low or i - j > m - low:
                continue
            e = ents[r]
            s = state[e]
            found = 1 if (s >> 24) != epoch else ((s >> 16) & 0xFF) + 1
            state[e] = stamp | (found << 16) | (i << 8) | min(j, 255)
            if found == req_min:
                touched[nt] = e
                nt += 1
    out = np.empty(nt, np.int32)
    n_out = 0
    for t in range(nt):
        e = touched[t]
        s = state[e]
        found = (s >> 16) & 0xFF
        n = lens[e]
        low = lcs_min[n]
        if found < req[n] or ((s >> 8) & 0xFF) - found + 1 > m - low or (s & 0xFF) - found + 1 > n - low:
            continue
        out[n_out] = e
        n_out += 1
    return out[:n_out]


# What fits the packing: queries of up to MAX_QUERY tokens (counts and positions in 8 bits), pool
# entries of up to MAX_ENTRY tokens (n in 15 bits of a posting); others take the numpy path.
# Stamps take 7 bits (the sign bit stays clear): the state is cleared every EPOCHS queries.
MAX_QUERY = 255
MAX_ENTRY = 0x7FFF
EPOCHS = 127
candidates = numba.njit(cache=True, nogil=True)(_candidates) if numba is not None else None
