"""Keeping secrets out of files, logs and messages: the one place that knows how.

A teacher URL may carry credentials (`https://user:secret@host/v1`, `?api_key=...`); a command line
may carry `--api-key K`. Anything Sprout stores (config.yaml, every record's `teacher.endpoint`,
summaries) or prints (errors, logged commands) goes through `redact_url` / `redact_command` first.
The real URL is used only to make requests.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# vLLM flags whose value is a secret (their `--flag=value` form is masked too)
SECRET_FLAGS = ("--api-key", "--hf-token")


def redact_url(url: str) -> str:
    """`url` without its userinfo (`user:pass@`) and with every query value masked; a
    comma-separated list of URLs (as --teacher-url takes) is redacted item by item."""
    if "," in url:
        return ",".join(redact_url(u) for u in url.split(","))
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # not a URL we can parse: say nothing about it
        return MASK
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        query = urlencode([(k, MASK) for k, _ in parse_qsl(query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_command(cmd: list[str]) -> list[str]:
    """A copy of `cmd` with the values of SECRET_FLAGS masked and URLs in it redacted."""
    out, hide_next = [], False
    for arg in cmd:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(arg)
                hide_next = True
        elif "://" in arg:
            out.append(redact_url(arg))
        else:
            out.append(arg)
    return out
