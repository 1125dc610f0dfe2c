"""A scriptable image server on 127.0.0.1 for fetcher tests and the fetch benchmark (no network).

`ImageServer` answers GET from a threaded `http.server` (HTTP/1.1, keep-alive) on a free port. A path
gets a default `Reply` (`server.route("/a.jpg", body(data))`) and optionally a script of replies used
first, one per request (`server.script("/a.jpg", status(503), body(data))`). Replies: `body` (any status,
content type, headers; `content_length` may lie or be left out), `status`, `redirect` (with or without
Location), `trickle` (one chunk every `interval_s`, forever), `hang` (read the request, never answer)
and `disconnect`. With `tls` (a server-side SSLContext) it speaks HTTPS. The server records every request (`requests`) and the most it had in progress at
once, per path prefix (`max_in_flight`). Closing wakes every handler that waits or trickles.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.support.local_server import LocalServer


@dataclass(frozen=True)
class Reply:
    kind: str = "body"  # body | trickle | hang | disconnect
    status: int = 200
    data: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # "auto": the real length; None: no header and close the connection after the body; or a number.
    content_length: int | str | None = "auto"
    delay_s: float = 0.0
    interval_s: float = 0.05


def body(
    data: bytes,
    content_type: str = "image/jpeg",
    status: int = 200,
    content_length: int | str | None = "auto",
    delay_s: float = 0.0,
) -> Reply:
    headers = {"Content-Type": content_type} if content_type else {}
    return Reply(status=status, data=data, headers=headers, content_length=content_length, delay_s=delay_s)


def status(code: int, retry_after: str | None = None) -> Reply:
    headers = {"Content-Type": "text/plain"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return Reply(status=code, data=f"status {code}".encode(), headers=headers)


def redirect(location: str | None, code: int = 302) -> Reply:
    return Reply(status=code, headers={"Location": location} if location is not None else {})


def trickle(chunk: bytes = b"\xff", interval_s: float = 0.05, content_type: str = "image/jpeg") -> Reply:
    """Headers at once (JPEG magic first), then `chunk` every `interval_s` until the server closes."""
    return Reply(kind="trickle", headers={"Content-Type": content_type}, data=chunk, interval_s=interval_s)


def hang() -> Reply:
    return Reply(kind="hang")


def disconnect() -> Reply:
    return Reply(kind="disconnect")


@dataclass(frozen=True)
class Seen:
    path: str
    headers: dict[str, str]
    at: float


class ImageServer(LocalServer):
    """Context manager: `with ImageServer() as server: server.url("/a.jpg")`."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Reply] = {}
        self.requests: list[Seen] = []
        self.max_in_flight: dict[str, int] = defaultdict(int)
        self._in_flight: dict[str, int] = defaultdict(int)
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self.scheme = "https" if tls else "http"
        super().__init__(_Handler, tls)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def route(self, path: str, reply: Reply) -> None:
        with self._lock:
            self.routes[path] = reply

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path].extend(replies)

    def hits(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)

    def _arrive(self, path: str, headers: dict[str, str]) -> Reply:
        key = path.split("?")[0].rsplit("/", 1)[0] or "/"
        with self._lock:
            self.requests.append(Seen(path, {k.lower(): v for k, v in headers.items()}, time.monotonic()))
            self._in_flight[key] += 1
            self.max_in_flight[key] = max(self.max_in_flight[key], self._in_flight[key])
            if self._scripts[path]:
                return self._scripts[path].popleft()
            return self.routes.get(path, status(404))

    def _leave(self, path: str) -> None:
        key = path.split("?")[0].rsplit("/", 1)[0] or "/"
        with self._lock:
            self._in_flight[key] -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body's tail waits for the client's
    # delayed ACK (~40 ms per request on loopback), which would swamp what the benchmark measures.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        owner: ImageServer = self.server.owner
        reply = owner._arrive(self.path, dict(self.headers))
        try:
            self._answer(owner, reply)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            owner._leave(self.path)

    def _answer(self, owner: ImageServer, reply: Reply) -> None:
        if reply.kind == "hang":
            owner.stopping.wait()
            self.close_connection = True
            return
        if reply.kind == "disconnect":
            self.close_connection = True
            return
        if reply.delay_s:
            owner.stopping.wait(reply.delay_s)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.kind == "trickle":
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b"\xff\xd8\xff")
            while not owner.stopping.wait(reply.interval_s):
                self.wfile.write(reply.data)
                self.wfile.flush()
            return
        if reply.content_length is None:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            length = len(reply.data) if reply.content_length == "auto" else reply.content_length
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(reply.data)
