"""Teacher client against a fault-injecting OpenAI-compatible server (faults a real vLLM server
won't produce on demand), and against the real vLLM server on the embedded model."""

from __future__ import annotations

import asyncio
import time

import pytest

from generator.client import ClientConfig, TeacherClient, TeacherError, split_urls
from tests.fault_server import FaultServer

FAST = ClientConfig(timeout=1.0, max_retries=4, backoff_base=0.02, backoff_max=0.1, rest_max=0.2)
MSG = [{"role": "user", "content": "hi"}]


def run(coro):
    return asyncio.run(coro)


async def _chat(urls, cfg=FAST, **kw):
    async with TeacherClient(urls, model="fake-model", api_key="sk-test", cfg=cfg) as c:
        out = await c.chat(MSG, max_tokens=4, **kw)
        return out, c.usage


@pytest.mark.parametrize("fault", ["500", "drop", "slow:3"])
def test_transient_fault_is_retried(fault):
    with FaultServer([fault, fault]) as srv:
        out, usage = run(_chat(srv.url))
    assert out.texts == ["answer 0"]
    assert [a for _, a in srv.requests] == [fault, fault, "ok"]
    assert usage.retries == 2 and usage.requests == 1


def test_429_honours_retry_after():
    with FaultServer(["429:1"]) as srv:
        out, _ = run(_chat(srv.url))
    (t0, a0), (t1, a1) = srv.requests
    assert (a0, a1) == ("429:1", "ok")
    assert t1 - t0 >= 0.95  # waited the server's Retry-After, not just our 20 ms backoff


def test_permanent_failure_is_a_clear_error_after_the_budget():
    with FaultServer(default="500") as srv:
        with pytest.raises(TeacherError, match="after 5 attempts"):
            run(_chat(srv.url))
    assert len(srv.requests) == FAST.max_retries + 1


@pytest.mark.parametrize("teacher", ["dead", "hung"])
def test_circuit_breaker_stops_a_run_whose_teacher_never_answers(teacher, capsys):
    """Per-request retries alone let a dead teacher hold many concurrent requests for many
    minutes (a field report: 783 s with a frozen bar); the run-wide breaker stops once nothing
    anywhere has succeeded for give_up_after seconds, and says what is happening meanwhile."""
    cfg = ClientConfig(timeout=0.3, max_retries=1000, backoff_base=0.02, backoff_max=0.1, rest_max=0.1,
                       give_up_after=1.0)

    async def many(url):
        async with TeacherClient(url, model="fake-model", api_key="sk-test", cfg=cfg) as c:
            await asyncio.gather(*(c.chat(MSG, max_tokens=4) for _ in range(16)))

    t0 = time.monotonic()
    if teacher == "dead":
        with pytest.raises(TeacherError, match="no teacher answered for"):
            run(many("http://127.0.0.1:9/v1"))
    else:  # accepts connections, never answers: the read timeout ends each attempt
        with FaultServer(default="slow:30") as srv:
            with pytest.raises(TeacherError, match="no teacher answered for"):
                run(many(srv.url))
    assert time.monotonic() - t0 < 10
    assert "teacher unreachable or failing" in capsys.readouterr().err


def test_connect_timeout_is_separate_from_the_read_timeout():
    c = TeacherClient("http://127.0.0.1:9/v1", model="m", api_key="k", cfg=ClientConfig(timeout=600, connect_timeout=7))
    t = c.endpoints[0].client.timeout
    assert (t.read, t.connect) == (600, 7)


def test_bad_request_is_not_retried():
    with FaultServer(["400"]) as srv:
        with pytest.raises(TeacherError, match="refused"):
            run(_chat(srv.url))
    assert len(srv.requests) == 1


def test_two_endpoints_one_dead_all_requests_succeed():
    dead = "http://127.0.0.1:9/v1"  # port 9 (discard): nothing listens, connection refused
    with FaultServer() as srv:
        async def many():
            async with TeacherClient([dead, srv.url], model="fake-model", cfg=FAST) as c:
                outs = await asyncio.gather(*[c.chat(MSG, max_tokens=4, n=2) for _ in range(40)])
                outs += await asyncio.gather(*[c.chat(MSG, max_tokens=4, n=2) for _ in range(40)])
                return outs, c.usage
        outs, usage = run(many())
    assert all(o.texts == ["answer 0", "answer 1"] for o in outs)
    assert all(o.endpoint == srv.url for o in outs)
    assert usage.requests == 80 and usage.completion_tokens == 80 * 4 and usage.prompt_tokens == 400
    # Only the first wave (about half of 40 requests, sent before anything was known) hits the
    # dead endpoint en masse; after that it rests and gets one probe at a time.
    assert usage.retries <= 30


def test_concurrency_is_bounded():
    with FaultServer(default="slow:0.3") as srv:
        async def many():
            cfg = ClientConfig(concurrency=4, timeout=5.0)
            async with TeacherClient(srv.url, model="fake-model", cfg=cfg) as c:
                t = time.monotonic()
                await asyncio.gather(*[c.chat(MSG, max_tokens=1) for _ in range(8)])
                return time.monotonic() - t
        elapsed = run(many())
    assert elapsed >= 0.55  # 8 requests of 0.3 s, 4 at a time: two waves


def test_concurrency_counts_sequences_not_requests():
    """A request for n samples holds n of the limit: what loads a vLLM server is sequences."""
    with FaultServer(default="slow:0.3") as srv:
        async def many():
            async with TeacherClient(srv.url, model="fake-model", cfg=ClientConfig(concurrency=4, timeout=5.0)) as c:
                t = time.monotonic()
                outs = await asyncio.gather(*[c.chat(MSG, max_tokens=1, n=2) for _ in range(4)],
                                            c.chat(MSG, max_tokens=1, n=9))  # more than the limit: runs alone
                return time.monotonic() - t, outs
        elapsed, outs = run(many())
    assert elapsed >= 0.85  # 2+2 | 2+2 | 9 alone: three waves of 0.3 s
    assert [len(o.texts) for o in outs] == [2, 2, 2, 2, 9]


def test_split_urls_normalises():
    assert split_urls("http://a:1, http://b:2/v1/") == ["http://a:1/v1", "http://b:2/v1"]


def test_api_key_never_in_repr_or_usage(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    c = TeacherClient("http://127.0.0.1:9/v1", model="m")
    assert "sk-secret-123" not in repr(vars(c)) and "sk-secret-123" not in repr(c.usage)


@pytest.mark.vllm
def test_real_vllm_chat_n2_counts_usage(vllm_teacher):
    async def go():
        async with TeacherClient(vllm_teacher.base_url, cfg=ClientConfig(timeout=120)) as c:
            out = await c.chat([{"role": "user", "content": "Name a color."}], n=2, max_tokens=12, temperature=0.8)
            return out, c.usage, c.model
    out, usage, model = run(go())
    assert model == vllm_teacher.model  # discovered through /v1/models
    assert len(out.texts) == 2 and all(t.strip() for t in out.texts)
    assert usage.completion_tokens == out.completion_tokens > 0 and usage.prompt_tokens > 0
