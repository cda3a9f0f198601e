"""Shared bits of the benchmarks: a teacher to measure against (a URL, or the embedded model
served here for the duration) and the machine's description for RESULTS.md."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}, {platform.python_version()}"


async def _served_model(url: str) -> str:
    from generator.client import TeacherClient

    async with TeacherClient(url) as c:
        return await c.resolve_model()


def model_name(url: str, given: str | None) -> str:
    """The model to ask for: as given, or the first one the server lists."""
    import asyncio

    return given or asyncio.run(_served_model(url))


@contextlib.contextmanager
def teacher(url: str | None):
    """Yield (base_url, model): the given server, or the embedded model served for the run."""
    if url:
        yield url, None
        return
    from generator.server import ServeConfig, VLLMServer, free_port

    with VLLMServer(ServeConfig(port=free_port())) as srv:
        yield srv.base_url, srv.model_name
