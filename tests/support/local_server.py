"""What the local test servers share: a threaded HTTP server on 127.0.0.1 (a free port) run as a
context manager, and a request handler base with JSON replies, a quiet log, and clients that hang up
mid-reply (a read timeout, a test that drops the connection) not treated as errors."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self


class LocalServer:
    """Serves `handler` on 127.0.0.1 in a thread; handlers reach the server object as `self.server.owner`.

    `stopping` is set on close, so handlers sleeping in a slow or endless reply finish at once.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> None:
        self.stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        if tls:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


class JSONHandler(BaseHTTPRequestHandler):
    def send_json(self, code: int, data: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its read timeout); nothing to answer.
            pass

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log."""
