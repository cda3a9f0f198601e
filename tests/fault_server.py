"""A tiny OpenAI-compatible HTTP server that fails on purpose, for faults a real vLLM server will
not produce on demand: 500s, 429 with Retry-After, dropped connections, slow replies -- and a
scripted teacher whose replies a test writes (`script`), to drive the pipeline deterministically."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    """`plan` is a list of actions consumed one per request; when empty, every request is "ok".

    Actions: "ok", "500", "429:SECONDS" (Retry-After), "drop" (close without a reply),
    "slow:SECONDS" (sleep, then reply), "400".

    `script(kind, request) -> reply` writes the "ok" replies: kind is "chat" or "completion",
    request the JSON body; reply is a text (every choice), a list of texts or (text,
    finish_reason) pairs (one per choice), or an int HTTP status to refuse this request with.
    A pair may carry a third item, the choice's token logprobs: a list of {token: logprob} dicts,
    the first key the sampled token, the rest its top alternatives. A request that asks for
    logprobs gets them (OpenAI's chat or completion shape); without scripted ones every word is a
    token of log-prob -0.5.
    `max_model_len` is reported in /v1/models as vLLM does. `port` (0: any free one) lets a test
    bring a "crashed" teacher back where its clients look for it.
    """

    def __init__(self, plan: list[str] | None = None, default: str = "ok", script=None,
                 max_model_len: int | None = None, owned_by: str = "fake", root: str | None = None,
                 port: int = 0):
        self.plan = list(plan or [])
        self.default = default
        self.script = script
        self.bodies: list[dict] = []  # every POSTed request body, in arrival order
        model = {"id": "fake-model", "object": "model", "owned_by": owned_by}
        if max_model_len:
            model["max_model_len"] = max_model_len
        if root:  # vLLM reports the folder it serves; Sprout reads the tokenizer from it
            model["root"] = root
        self.requests: list[tuple[float, str]] = []  # (time, action) per request
        self.seen: list[tuple[str, str]] = []  # (path with query, Authorization header) per POST
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _reply(self, code: int, body: dict, headers: dict | None = None):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._reply(200, {"object": "list", "data": [model]})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                req = json.loads(self.rfile.read(length) or b"{}")
                if server.dead:  # crash(): the port is closing; nothing more is answered
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                with server.lock:
                    server.seen.append((self.path, self.headers.get("Authorization", "")))
                    action = server.plan.pop(0) if server.plan else server.default
                    server.requests.append((time.monotonic(), action))
                    server.bodies.append(req)
                kind, _, arg = action.partition(":")
                if kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if kind == "500":
                    return self._reply(500, {"error": {"message": "injected failure"}})
                if kind == "400":
                    return self._reply(400, {"error": {"message": "bad request"}})
                if kind == "429":
                    return self._reply(429, {"error": {"message": "slow down"}}, {"Retry-After": arg or "1"})
                if kind == "slow":
                    time.sleep(float(arg))
                n = int(req.get("n") or 1)
                chat = self.path.split("?")[0].rstrip("/").endswith("chat/completions")
                replies = [(f"answer {i}", "stop") for i in range(n)]
                if server.script is not None:
                    out = server.script("chat" if chat else "completion", req)
                    if isinstance(out, int):
                        return self._reply(out, {"error": {"message": f"scripted refusal {out}"}})
                    out = [out] * n if isinstance(out, str) else out
                    replies = [(o, "stop") if isinstance(o, str) else tuple(o) for o in out][:n]
                if chat:
                    choices = [{"index": i, "finish_reason": r[1], "message": {"role": "assistant", "content": r[0]}}
                               for i, r in enumerate(replies)]
                else:
                    choices = [{"index": i, "finish_reason": r[1], "text": r[0]} for i, r in enumerate(replies)]
                if req.get("logprobs") is not None and req.get("logprobs") is not False:
                    for choice, r in zip(choices, replies):
                        choice["logprobs"] = _logprobs(r[2] if len(r) > 2 else [{w: -0.5} for w in r[0].split()], chat)
                tokens = sum(len(r[0].split()) for r in replies)
                self._reply(200, {"id": "x", "object": "chat.completion" if chat else "text_completion",
                                  "created": 0, "model": "fake-model", "choices": choices,
                                  "usage": {"prompt_tokens": 5, "completion_tokens": tokens,
                                            "total_tokens": 5 + tokens}})

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default backlog of 5 refuses bursts of connections

            def process_request(self, request, client_address):
                self.open_sockets.add(request)  # kept so that crash() can cut them, as a dead server's are
                super().process_request(request, client_address)

            def shutdown_request(self, request):
                self.open_sockets.discard(request)
                super().shutdown_request(request)

            def handle_error(self, request, client_address):
                # A client that gave up (a cancelled request, a stopped run) is what the fault
                # tests provoke; the default prints a traceback to stderr, which a later test's
                # capsys then reads as the CLI's own output.
                import sys
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", port), Handler)  # a port again: a teacher back after a crash
        self.httpd.open_sockets = set()  # accepted connections, which crash() cuts
        self.dead = False
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "FaultServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def crash(self) -> None:
        """Die as a killed server does: the port closed and every open connection cut, requests
        in progress unanswered (HTTP/1.1 keep-alive connections would otherwise go on being served)."""
        import socket

        self.dead = True  # first: serve_forever's shutdown() takes up to its 0.5 s poll
        self.httpd.server_close()
        for sock in list(self.httpd.open_sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.httpd.shutdown()


def _logprobs(per_token: list[dict[str, float]], chat: bool) -> dict:
    """OpenAI's logprobs object of one choice from {sampled token: logprob, alternatives...} dicts."""
    if chat:
        return {"content": [{"token": next(iter(d)), "logprob": next(iter(d.values())), "bytes": None,
                             "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in d.items()]}
                            for d in per_token]}
    return {"tokens": [next(iter(d)) for d in per_token], "token_logprobs": [next(iter(d.values())) for d in per_token],
            "top_logprobs": [dict(d) for d in per_token], "text_offset": [0] * len(per_token)}
