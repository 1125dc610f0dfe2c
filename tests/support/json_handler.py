"""The request handler base the local test servers share: JSON replies, a quiet log, and clients that
hang up mid-reply (a read timeout, a test that drops the connection) are not errors."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any


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
