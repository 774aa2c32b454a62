"""A fake OpenAI-compatible chat-completions server for tests: scripted replies, every request recorded.

Replies are scripted per model name, so each test can use a model of its own and never see another test's
requests (a worker may still be finishing an earlier test's retry). A request for a model with no reply left
gets a 500, which the agent treats as an infrastructure error: a test that forgot a reply hangs visibly in
retries instead of passing by accident.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

CHAT_PATH = "/v1/chat/completions"
NO_REPLY_STATUS = 500


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    :param content: the assistant message's text (a 200 chat completion) unless ``body`` is given.
    :param status: the HTTP status.
    :param body: a raw JSON body to send instead of a chat completion (an error body, say).
    :param headers: extra response headers (``Retry-After``).
    :param delay: seconds to wait before answering (to outlast a client's timeout).
    :param usage: the ``usage`` figures of a chat completion.
    """

    content: str = ""
    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    usage: dict[str, int] = field(
        default_factory=lambda: {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    )

    def payload(self, model: str) -> dict[str, Any]:
        if self.body is not None:
            return self.body
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.content},
                    "finish_reason": "stop",
                }
            ],
            "usage": self.usage,
        }


def error_reply(status: int, message: str, **headers: str) -> Reply:
    """An OpenAI-style error answer.

    :param status: the HTTP status.
    :param message: ``error.message``.
    :param headers: response headers (``Retry_After="1"`` becomes ``Retry-After: 1``).
    """
    return Reply(
        status=status,
        body={"error": {"message": message, "type": "fake_error"}},
        headers={name.replace("_", "-"): value for name, value in headers.items()},
    )


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it.

    :param path: the request path.
    :param headers: the request headers, names lower-cased.
    :param body: the decoded JSON body (None if it was not JSON).
    :param received_at: ``time.monotonic()`` on arrival.
    """

    path: str
    headers: dict[str, str]
    body: Any
    received_at: float

    @property
    def model(self) -> str:
        return str(self.body.get("model", "")) if isinstance(self.body, dict) else ""

    def message(self, role: str) -> str:
        """The content of the first message with this role."""
        messages = self.body.get("messages", []) if isinstance(self.body, dict) else []
        return next((str(m.get("content", "")) for m in messages if m.get("role") == role), "")


class _Server(ThreadingHTTPServer):
    # The standard library listens with a backlog of 5: a worker of 32 threads connecting at once (a benchmark)
    # would have its surplus connections reset, which the agent reports as an unreachable server.
    request_queue_size = 128


class FakeLlmServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) answering ``POST /v1/chat/completions``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._responders: dict[str, Callable[[Recorded], Reply]] = {}
        self.requests: list[Recorded] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = None
                recorded = Recorded(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
                )
                reply = server._take(recorded)
                time.sleep(reply.delay)
                data = json.dumps(reply.payload(recorded.model)).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test): nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-llm", daemon=True)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what ``WRE_LLM_BASE_URL`` points at."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def script(self, model: str, *replies: Reply) -> None:
        """Queue replies for requests naming ``model``, answered in order."""
        with self._lock:
            self._scripts[model].extend(replies)

    def respond(self, model: str, responder: Callable[[Recorded], Reply]) -> None:
        """Answer requests naming ``model`` with ``responder(request)`` once its script is spent (for many
        concurrent requests, whose order a script cannot know)."""
        with self._lock:
            self._responders[model] = responder

    def requests_for(self, model: str) -> list[Recorded]:
        """The requests that named ``model``, in arrival order."""
        with self._lock:
            return [request for request in self.requests if request.model == model]

    def _take(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
            if recorded.path != CHAT_PATH:
                return error_reply(404, f"no route {recorded.path}")
            script = self._scripts[recorded.model]
            if not script and recorded.model in self._responders:
                return self._responders[recorded.model](recorded)
            if not script:
                return error_reply(NO_REPLY_STATUS, f"no scripted reply left for model {recorded.model!r}")
            return script.popleft()

    def __enter__(self) -> FakeLlmServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
