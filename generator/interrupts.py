"""Interrupts that wait for the bookkeeping: a SIGTERM or SIGHUP (which `sprout` turns into an
exception raised wherever the main thread is, trainer/cli.py) that lands while a record group and
its counters are being written is raised when that write is done instead.

Why: a run's counters (kept instructions, rejections by reason, usage) and its files are updated
one after the other. An exception between the two leaves stats.json disagreeing with data.jsonl or
rejected.jsonl by one until the next resume rebuilds them. Ctrl-C needs none of this: under
asyncio it cancels the run's task, which only happens at an `await`, and no block below awaits."""

from __future__ import annotations

from contextlib import contextmanager

_depth = 0
_pending: BaseException | None = None


@contextmanager
def bookkeeping():
    """A block that writes a record and counts it; an interrupt arriving inside is raised at its end."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            exc, _pending = _pending, None
            raise exc


def interrupt(exc: BaseException) -> None:
    """Raise `exc` now, or at the end of the bookkeeping block under way (the signal handler's call)."""
    global _pending
    if _depth:
        _pending = _pending or exc
        return
    raise exc
