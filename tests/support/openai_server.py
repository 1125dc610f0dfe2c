"""A scriptable OpenAI-compatible chat server on 127.0.0.1 for backend tests (no network, no vLLM).

`OpenAIServer` answers POST /v1/chat/completions from a threaded `http.server` on a free port. Each
request takes the next scripted `Reply` (`server.script(status(500), ok())`), or, when the script is
empty, the default: a callable `request -> Reply` or a fixed `Reply`, `ok()` unless set. `ok()` without
content answers a JSON object built from the request's `response_format` schema (`placeholder`).
Replies: `ok`, `truncated` (finish_reason length), `status` (any code/body, optional Retry-After),
`malformed` (a 200 whose body is not JSON), `disconnect` (close without answering), and a `delay_s`
on any of them (slow answers). The server records every request (`requests`: path, headers, JSON
body, arrival time) and the most requests it had in progress at once (`max_in_flight`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.local_server import JSONHandler, LocalServer

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Reply:
    """What the server does with one request."""

    kind: str = "ok"  # ok | raw | disconnect
    content: str | None = None
    finish_reason: str = "stop"
    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def ok(content: str | None = None, delay_s: float = 0.0) -> Reply:
    """A completion with `content` (default: a JSON object matching the request's schema)."""
    return Reply(content=content, delay_s=delay_s)


def truncated(content: str | None = None) -> Reply:
    """A completion cut by max_tokens (finish_reason "length")."""
    return Reply(content=content, finish_reason="length")


def status(code: int, body: str = "", retry_after: str | None = None, delay_s: float = 0.0) -> Reply:
    """Any status with a raw body (default: an OpenAI-style error object)."""
    body = body or json.dumps({"error": {"message": f"scripted status {code}", "code": code}})
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Reply(kind="raw", status=code, body=body, headers=headers, delay_s=delay_s)


def malformed(body: str = '{"choices": [ this is not JSON') -> Reply:
    return Reply(kind="raw", status=200, body=body)


def disconnect() -> Reply:
    """Close the connection without sending a response."""
    return Reply(kind="disconnect")


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any
    at: float

    @property
    def last_user_text(self) -> str:
        users = [m.get("content", "") for m in self.body.get("messages", []) if m.get("role") == "user"]
        return users[-1] if users else ""


def placeholder(schema: dict) -> Any:
    """A simple value that satisfies `schema` (objects, arrays, strings, numbers, enums, anyOf)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return placeholder(schema[key][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {name: placeholder(sub) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        n = max(schema.get("minItems", 1), 1)
        n = min(n, schema.get("maxItems", n))
        return [placeholder(schema.get("items", {"type": "string"})) for _ in range(n)]
    if kind == "string":
        n = max(schema.get("minLength", 1), 1)
        return "x" * min(n, schema.get("maxLength", n))
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    return {"boolean": True, "null": None}.get(kind)


class OpenAIServer(LocalServer):
    """Context manager: `with OpenAIServer() as server: ... server.base_url ...`."""

    def __init__(self, default: Reply | Callable[[RecordedRequest], Reply] | None = None) -> None:
        self.default = default or ok()
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        super().__init__(_Handler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in arrival order."""
        with self._lock:
            self._script.extend(replies)

    def _arrive(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[RecordedRequest, Reply]:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = RecordedRequest(path, {k.lower(): v for k, v in headers.items()}, body, time.monotonic())
        with self._lock:
            self.requests.append(request)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            if self._script:
                return request, self._script.popleft()
        return request, self.default(request) if callable(self.default) else self.default

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


def completion_body(request: RecordedRequest, reply: Reply, n: int) -> str:
    content = reply.content
    if content is None:
        fmt = (request.body or {}).get("response_format") or {}
        schema = fmt.get("json_schema", {}).get("schema")
        content = json.dumps(placeholder(schema)) if schema else "plain text, no schema requested"
    return json.dumps(
        {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": (request.body or {}).get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


class _Handler(JSONHandler):
    def do_POST(self) -> None:
        owner: OpenAIServer = self.server.owner
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request, reply = owner._arrive(self.path, dict(self.headers), raw)
        try:
            if self.path != CHAT_PATH:
                self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}), {})
                return
            if reply.delay_s:
                owner.stopping.wait(reply.delay_s)
            if reply.kind == "disconnect":
                self.close_connection = True
            elif reply.kind == "raw":
                self._send(reply.status, reply.body, reply.headers)
            else:
                self._send(200, completion_body(request, reply, len(owner.requests)), {})
        finally:
            owner._leave()

    def _send(self, code: int, body: str, headers: dict[str, str]) -> None:
        self.send_json(code, body.encode(), headers)
