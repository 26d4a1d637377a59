"""A scripted OpenAI-compatible chat server on 127.0.0.1 for the descriptor tests.

It is the remote end only: the code under test talks to it with the real `openai` client.
`answer` decides each reply from the request body (step 1, 2 or 3 of the paper's protocol is
recognised from the prompt; a request with ``response_format`` gets JSON ``{"items": [...]}``, one
without a numbered list); `accepts` lists the response_format types the server knows (others
get llama-cpp-python's answer to ``json_schema``: HTTP 500 naming response_format); `fail_next` queues error replies
(429, 500, 401, a slow answer, an HTML page) served before any scripted answer. Every request
body is recorded, so tests count requests.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

STEP1_ANSWER = "Background\n2. Texture\n3. Resolution"
"""Step 1 answered the way a primed model does: item 1 without its number."""

KEYWORD_RUNS = [
    ["Snow", "Beach", "Forest", "City streets"],
    ["snow", "Beaches", "desert", "Forest."],
    ["City Street", "Mountains", "DESERT", "Underwater"],
]
"""Step-2 answers per run (chosen by the request's seed): duplicates across runs on purpose."""


def listed(request: dict[str, Any], items: list[str]) -> str:
    """`items` as JSON ``{"items": [...]}`` if the request asked for structured output, else as a numbered list."""
    if request.get("response_format"):
        return json.dumps({"items": items})
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


def keywords_answer(request: dict[str, Any]) -> str:
    """The keyword list; the run is the request's seed (0, 1, 2 with ``--seed 0``)."""
    return listed(request, KEYWORD_RUNS[int(request.get("seed") or 0) % len(KEYWORD_RUNS)])


def descriptors_answer(request: dict[str, Any]) -> str:
    """One ``A photo of a [class] ...`` item per keyword of the step-3 prompt (``{}`` for the class in JSON)."""
    keywords = re.search(r"following keywords: (.*)\n", prompt_of(request)).group(1).split(", ")
    slot = "{}" if request.get("response_format") else "[class]"
    return listed(request, [f'"A photo of a {slot} with {k.lower()} in the background."' for k in keywords])


def prompt_of(request: dict[str, Any]) -> str:
    """The text of the request's last message."""
    return request["messages"][-1]["content"]


def protocol_answer(request: dict[str, Any]) -> str:
    """A well-formed answer to whichever step of the protocol `request` is."""
    prompt = prompt_of(request)
    if "List possible spurious correlations" in prompt:
        return listed(request, ["Background", "Texture", "Resolution"]) if request.get("response_format") else STEP1_ANSWER
    if "bias keywords" in prompt:
        return keywords_answer(request)
    if "Design a prompt" in prompt:
        return descriptors_answer(request)
    raise AssertionError(f"unexpected prompt {prompt!r}")


@dataclass
class Reply:
    """An HTTP reply: status, body (JSON, or text sent as is), extra headers, and a delay before answering."""

    status: int
    body: dict[str, Any] | str
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content_type: str = "application/json"


def html_reply() -> Reply:
    """A web page with status 200, as a proxy or a wrong --base-url serves."""
    return Reply(200, "<!DOCTYPE html><html><body><h1>Welcome to nginx!</h1></body></html>", content_type="text/html")


def error_reply(status: int, message: str = "scripted failure", delay_s: float = 0.0) -> Reply:
    """An OpenAI-style error; retry-after-ms keeps the client's backoff short in tests."""
    return Reply(
        status, {"error": {"message": message, "type": "test", "code": None}}, {"retry-after-ms": "5"}, delay_s
    )


class FakeLLMServer:
    """``with FakeLLMServer() as server: ... server.url ... len(server.requests)``."""

    def __init__(self, answer: Callable[[dict[str, Any]], str] = protocol_answer,
                 accepts: tuple[str, ...] = ("json_schema", "json_object")) -> None:
        self.answer = answer
        self.accepts = accepts
        self.requests: list[dict[str, Any]] = []
        self.authorization: list[str] = []
        self._failures: list[Reply] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The base URL to give the openai client."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def fail_next(self, reply: Reply, times: int = 1) -> None:
        """Serve `reply` to the next `times` requests."""
        with self._lock:
            self._failures += [reply] * times

    def _reply(self, request: dict[str, Any], authorization: str) -> Reply:
        """Record the request; the next queued failure or the scripted answer."""
        with self._lock:
            self.requests.append(request)
            self.authorization.append(authorization)
            if self._failures:
                return self._failures.pop(0)
        response_format = request.get("response_format")
        if response_format and response_format.get("type") not in self.accepts:
            # llama-cpp-python 0.3's answer: its validation error as HTTP 500, with a traceback
            message = ("1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                       "'msg': \"Input should be 'text' or 'json_object'\"}\n\n  File \"app.py\", line 376")
            return error_reply(500, message)
        text = self.answer(request)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        body = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request["model"],
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        return Reply(200, body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        """A request handler class bound to this server."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length", 0))
                request = json.loads(self.rfile.read(length))
                reply = server._reply(request, self.headers.get("authorization", ""))
                time.sleep(reply.delay_s)
                payload = (reply.body if isinstance(reply.body, str) else json.dumps(reply.body)).encode()
                self.send_response(reply.status)
                self.send_header("content-type", reply.content_type)
                self.send_header("content-length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
                """Silence the per-request log lines."""

        return Handler

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
