"""A tiny OpenAI-compatible HTTP server that fails on purpose, for faults a real vLLM server will
not produce on demand: 500s, 429 with Retry-After, dropped connections, slow replies."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    """`plan` is a list of actions consumed one per request; when empty, every request is "ok".

    Actions: "ok", "500", "429:SECONDS" (Retry-After), "drop" (close without a reply),
    "slow:SECONDS" (sleep, then reply), "400".
    """

    def __init__(self, plan: list[str] | None = None, default: str = "ok"):
        self.plan = list(plan or [])
        self.default = default
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
                self._reply(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                req = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.seen.append((self.path, self.headers.get("Authorization", "")))
                    action = server.plan.pop(0) if server.plan else server.default
                    server.requests.append((time.monotonic(), action))
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
                choices = [{"index": i, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": f"answer {i}"}} for i in range(n)]
                self._reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "fake-model",
                                  "choices": choices,
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 2 * n, "total_tokens": 5 + 2 * n}})

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default backlog of 5 refuses bursts of connections

        self.httpd = Server(("127.0.0.1", 0), Handler)
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
