"""Async client for OpenAI-compatible teachers (vLLM or any hosted API).

What it adds over a bare `openai.AsyncOpenAI` loop:
- bounded concurrency (a semaphore) that is high by default, so vLLM's continuous batcher stays full;
- retries with exponential backoff and full jitter on connection errors, timeouts, 429 and 5xx,
  honouring Retry-After; other 4xx errors fail at once (retrying a bad request cannot help);
- several base URLs: each request goes to the least-loaded endpoint that is not resting; an
  endpoint that fails rests (backoff doubling per consecutive failure) while the others carry on;
- token usage counted across all requests.
API keys come from the environment only and are never stored on the object's public state;
URLs are redacted (generator.redact) wherever they are stored or printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx
import openai

from generator.errors import UserError
from generator.redact import redact_url


class TeacherError(UserError):
    """A request failed permanently (retry budget spent, or a non-retryable 4xx)."""


class BadRequest(TeacherError):
    """The server refused this one request (400 / 413 / 422: too long, a bad parameter): other
    requests can still succeed, so a pipeline counts it and goes on. 401 / 403 / 404 (no key, no
    access, unknown model) stay TeacherErrors: no request can succeed after them."""

    def __init__(self, message: str, status: int, detail: str):
        super().__init__(message)
        self.status, self.detail = status, detail


BAD_REQUEST_STATUSES = (400, 413, 422)


@dataclass
class Completion:
    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int
    endpoint: str
    model: str
    # First choice only, one {token: logprob} per generated token, when the request asked for
    # top logprobs (generator.classify compares Yes against No with it); None otherwise.
    top_logprobs: list[dict[str, float]] | None = None
    # Per choice, the log-prob of each generated token, when the request asked for logprobs
    # (magpie drops requests its own writer finds unlikely); None otherwise.
    token_logprobs: list[list[float]] | None = None

    def mean_logprob(self, i: int) -> float | None:
        """Choice i's mean log-prob per generated token, or None without logprobs."""
        lps = self.token_logprobs[i] if self.token_logprobs and i < len(self.token_logprobs) else None
        return sum(lps) / len(lps) if lps else None


def _logprobs(resp, kind: str) -> tuple[list[dict[str, float]] | None, list[list[float]] | None]:
    """(first choice's top logprobs per token, every choice's token logprobs) from a chat or
    completion response, in OpenAI's two shapes; (None, None) where the server sent none."""
    tops, tokens = None, []
    for i, choice in enumerate(resp.choices):
        lp = getattr(choice, "logprobs", None)
        if lp is None:
            return tops, None
        if kind == "chat":
            content = lp.content or []
            tokens.append([t.logprob for t in content if t.logprob is not None])
            if i == 0 and any(t.top_logprobs for t in content):
                tops = [{alt.token: alt.logprob for alt in t.top_logprobs or []} for t in content]
        else:
            tokens.append([x for x in lp.token_logprobs or [] if x is not None])
            if i == 0 and lp.top_logprobs:
                tops = [dict(t or {}) for t in lp.top_logprobs]
    return tops, tokens or None


@dataclass
class Usage:
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # {stage: {"requests", "prompt_tokens", "completion_tokens"}}: which stage spends the tokens
    by_stage: dict = field(default_factory=dict)


@dataclass
class _Endpoint:
    url: str
    client: openai.AsyncOpenAI
    in_flight: int = 0
    fails: int = 0  # consecutive failures
    rest_until: float = 0.0


class _SequenceLimit:
    """At most `capacity` sequences in flight: a request for n samples holds n. A 2-core vLLM
    runs 64 streams well; 32 requests of n=6 are 192 streams, whose replies then take longer than
    the read timeout and are retried from scratch (seen: a run that kept retrying timeouts)."""

    def __init__(self, capacity: int):
        self.capacity, self.used = capacity, 0
        self._cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, n: int):
        n = max(1, min(n, self.capacity))  # a request bigger than the limit runs alone
        async with self._cond:
            await self._cond.wait_for(lambda: self.used + n <= self.capacity)
            self.used += n
        try:
            yield
        finally:
            async with self._cond:
                self.used -= n
                self._cond.notify_all()


@dataclass
class ClientConfig:
    concurrency: int = 128  # sequences in flight (a request for n samples counts n)
    timeout: float = 600.0  # seconds per request (reading the reply)
    connect_timeout: float = 10.0  # seconds to open a connection: a dead host fails fast
    max_retries: int = 6
    # Run-wide circuit breaker: no request succeeded on any endpoint for this long while requests
    # keep failing -> stop (the caller keeps every record). Per-request retries alone let a dead
    # teacher hold a run of many concurrent requests for many minutes with a frozen bar.
    give_up_after: float = 300.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    rest_max: float = 30.0  # longest rest for a failing endpoint


def api_key_from_env(env_name: str | None = None, urls: str | list[str] | None = None) -> str:
    """The API key to send to the teacher at `urls`.

    With `env_name` (--api-key-env): that variable, which must be set. Without it, $OPENAI_API_KEY is
    sent only when every URL's host is api.openai.com: the variable is commonly set for other tools,
    and sending it to whatever --teacher-url names (a colleague's vLLM, a proxy) would leak it. Any
    other teacher gets a placeholder (vLLM needs none); name its variable with --api-key-env."""
    if env_name:
        if env_name not in os.environ:
            raise UserError(f"--api-key-env {env_name}: that environment variable is not set")
        return os.environ[env_name]
    items = split_urls(urls) if urls else []
    if items and all(urlsplit(u).hostname == "api.openai.com" for u in items):
        return os.environ.get("OPENAI_API_KEY", "EMPTY")
    return "EMPTY"


def split_urls(urls: str | list[str]) -> list[str]:
    """Comma-separated base URLs -> a list, each ending in /v1 (added to the path, so a query
    string such as ?api-version=... stays intact)."""
    items = urls.split(",") if isinstance(urls, str) else [u for x in urls for u in x.split(",")]
    out = [u.strip() for u in items if u.strip()]
    if not out:
        raise UserError("--teacher-url: give at least one URL, e.g. http://127.0.0.1:8000/v1")
    result = []
    for u in out:
        parts = urlsplit(u)
        path = parts.path.rstrip("/")
        result.append(urlunsplit(parts._replace(path=path if path.endswith("/v1") else path + "/v1")))
    return result


def _base_and_query(url: str) -> dict:
    """openai's client appends paths after a query string in base_url; hand the query over apart."""
    parts = urlsplit(url)
    return {"base_url": urlunsplit(parts._replace(query="", fragment="")),
            "default_query": dict(parse_qsl(parts.query, keep_blank_values=True)) or None}


def _retry_after(err: Exception) -> float | None:
    resp = getattr(err, "response", None)
    value = resp.headers.get("retry-after") if resp is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _retryable(err: Exception) -> bool:
    if isinstance(err, (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)):
        return True
    return isinstance(err, openai.APIStatusError) and (err.status_code >= 500 or err.status_code in (408, 409, 429))


class TeacherClient:
    def __init__(self, urls: str | list[str], model: str | None = None, api_key: str | None = None,
                 cfg: ClientConfig | None = None):
        self.cfg = cfg or ClientConfig()
        key = api_key if api_key is not None else api_key_from_env(None, urls)
        self.endpoints = [
            _Endpoint(u, openai.AsyncOpenAI(**_base_and_query(u), api_key=key, max_retries=0,
                                            timeout=httpx.Timeout(self.cfg.timeout, connect=self.cfg.connect_timeout)))
            for u in split_urls(urls)
        ]
        self.model = model
        self.usage = Usage()
        self._limit = _SequenceLimit(self.cfg.concurrency)
        self._last_success = time.monotonic()
        self._last_notice = 0.0

    def _check_breaker(self, err: Exception) -> None:
        """Called after every failed attempt: say so (at most every 15 s), and stop the run once no
        request anywhere has succeeded for give_up_after seconds."""
        now = time.monotonic()
        silent = now - self._last_success
        if silent > self.cfg.give_up_after:
            raise TeacherError(f"no teacher answered for {silent:.0f} s ({type(err).__name__}: {str(err)[:200]}); "
                               "stopped with every record kept -- start the teacher (see --teacher-url) "
                               "and rerun the same command to resume")
        if now - self._last_notice > 15:
            self._last_notice = now
            print(f"teacher unreachable or failing ({type(err).__name__}), retrying ({self.usage.retries + 1} "
                  f"retries so far; giving up after {self.cfg.give_up_after:.0f} s without an answer)",
                  file=sys.stderr, flush=True)

    async def resolve_model(self) -> str:
        """The model name: as given, or the first one the first reachable endpoint serves."""
        if self.model:
            return self.model
        errors = []
        for ep in self.endpoints:
            try:
                models = await ep.client.models.list()
                self.model = models.data[0].id
                return self.model
            except (openai.APIError, IndexError) as e:
                errors.append(f"{redact_url(ep.url)}: {e}")
        raise TeacherError("could not list models on any teacher endpoint (" + "; ".join(errors) +
                           "); check --teacher-url or pass --teacher-model")

    def _pick(self) -> tuple[_Endpoint | None, float]:
        """The least-loaded usable endpoint, or (None, seconds to wait). An endpoint that failed
        gets one probe request at a time once its rest is over, until a success clears it."""
        now = time.monotonic()
        ready = [e for e in self.endpoints if e.rest_until <= now and (e.fails == 0 or e.in_flight == 0)]
        if ready:
            return min(ready, key=lambda e: e.in_flight), 0.0
        resting = [e.rest_until - now for e in self.endpoints if e.rest_until > now]
        return None, max(0.01, min(resting)) if resting else 0.05

    async def _call(self, kind: str, payload: dict, model: str | None = None, stage: str = "other") -> Completion:
        """One request with retries: pick an endpoint, try, and on a retryable failure rest that
        endpoint and wait (backoff with full jitter, or the server's Retry-After) before the next."""
        model = model or await self.resolve_model()
        async with self._limit.hold(int(payload.get("n") or 1)):
            last: Exception | None = None
            for attempt in range(self.cfg.max_retries + 1):
                ep = await self._endpoint()
                try:
                    return await self._attempt(ep, kind, model, payload, stage)
                except openai.APIError as err:
                    last = err
                    delay = self._failed(ep, err, final=attempt == self.cfg.max_retries, attempt=attempt)
                    if delay is None:
                        break
                    await asyncio.sleep(delay)
            raise TeacherError(f"teacher request failed after {self.cfg.max_retries + 1} attempts "
                               f"({type(last).__name__}: {last}); is the server up? see --teacher-url")

    async def _endpoint(self) -> _Endpoint:
        ep, wait = self._pick()
        while ep is None:
            await asyncio.sleep(wait)
            ep, wait = self._pick()
        return ep

    async def _attempt(self, ep: _Endpoint, kind: str, model: str, payload: dict, stage: str) -> Completion:
        ep.in_flight += 1
        try:
            if kind == "chat":
                resp = await ep.client.chat.completions.create(model=model, **payload)
                texts = [c.message.content or "" for c in resp.choices]
            else:
                resp = await ep.client.completions.create(model=model, **payload)
                texts = [c.text for c in resp.choices]
        finally:
            ep.in_flight -= 1
        ep.fails = 0
        self._last_success = time.monotonic()
        self.usage.requests += 1
        pt, ct = (resp.usage.prompt_tokens, resp.usage.completion_tokens) if resp.usage else (0, 0)
        self.usage.prompt_tokens += pt
        self.usage.completion_tokens += ct
        spent = self.usage.by_stage.setdefault(stage, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
        spent["requests"], spent["prompt_tokens"], spent["completion_tokens"] = (
            spent["requests"] + 1, spent["prompt_tokens"] + pt, spent["completion_tokens"] + ct)
        asked = payload.get("logprobs") is not None and payload.get("logprobs") is not False  # completion: 0 asks too
        tops, tokens = _logprobs(resp, kind) if asked else (None, None)
        return Completion(texts, [c.finish_reason or "" for c in resp.choices], pt, ct, redact_url(ep.url), model,
                          top_logprobs=tops, token_logprobs=tokens)

    def _failed(self, ep: _Endpoint, err: openai.APIError, final: bool, attempt: int) -> float | None:
        """After a failed attempt: raise for what no retry can fix, else the seconds to wait
        before the next attempt (None when the retry budget is spent)."""
        if not _retryable(err):
            status = getattr(err, "status_code", None)
            if status in BAD_REQUEST_STATUSES:
                self._last_success = time.monotonic()  # refused, but the teacher is alive
                raise BadRequest(f"teacher {redact_url(ep.url)} refused one request ({status}): {err}",
                                 status, str(err)[:1000]) from None
            raise TeacherError(f"teacher {redact_url(ep.url)} refused the request: {err}") from None
        ep.fails += 1
        self._check_breaker(err)
        ep.rest_until = time.monotonic() + min(self.cfg.rest_max, self.cfg.backoff_base * 2 ** ep.fails)
        if final:
            return None
        self.usage.retries += 1
        delay = random.uniform(0, min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** attempt))
        after = _retry_after(err)
        if after is not None:
            delay = max(delay, min(after, 60.0))
            ep.rest_until = max(ep.rest_until, time.monotonic() + min(after, 60.0))
        return delay

    async def chat(self, messages: list[dict], model: str | None = None, stage: str = "other", **params
                   ) -> Completion:
        """Chat completion; params are OpenAI's (n, max_tokens, temperature, stop, response_format...).
        `model` overrides the client's model for this request (e.g. a LoRA adapter's name); `stage`
        names what the request is for in `usage.by_stage`."""
        return await self._call("chat", {"messages": messages, **params}, model, stage)

    async def complete(self, prompt: str, model: str | None = None, stage: str = "other", **params) -> Completion:
        """Raw text completion (no chat template), for base models and raw templates."""
        return await self._call("completion", {"prompt": prompt, **params}, model, stage)

    async def aclose(self) -> None:
        for ep in self.endpoints:
            await ep.client.close()

    async def __aenter__(self) -> "TeacherClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
