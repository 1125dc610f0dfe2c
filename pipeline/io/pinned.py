"""An httpcore network backend that dials only addresses the SSRF guard vetted (pipeline/io/net_guard.py).

Before each request the fetcher pins, on its own thread, the `Target` the guard returned and a deadline.
`connect_tcp` ignores the host name httpcore hands it and dials the pinned addresses in order (so there
is no second DNS lookup for a rebinding server to answer differently); without a pin it refuses to
connect at all. TLS still runs against the URL's host name (httpcore passes it as SNI and for
certificate checks). Every read, write and TLS handshake has its timeout cut to what is left before the
deadline, so a server that trickles one byte per second cannot outlive the total time limit.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpcore

from pipeline.io.net_guard import Target

# (address, port, timeout) -> an open stream; the default is httpcore's own socket backend.
Connector = Callable[[str, int, "float | None"], httpcore.NetworkStream]


def socket_connector(address: str, port: int, timeout: float | None) -> httpcore.NetworkStream:
    return httpcore.SyncBackend().connect_tcp(address, port, timeout=timeout)


class PinnedBackend(httpcore.NetworkBackend):
    def __init__(self, connector: Connector = socket_connector) -> None:
        self.connector = connector
        self._local = threading.local()

    def pin(self, target: Target, deadline: float) -> None:
        self._local.target, self._local.deadline = target, deadline

    def unpin(self) -> None:
        self._local.target = None

    def remaining(self, timeout: float | None) -> float:
        """`timeout` cut to the time left before this thread's deadline; raises once it has passed."""
        left = getattr(self._local, "deadline", float("inf")) - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("total time limit reached")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        target: Target | None = getattr(self._local, "target", None)
        if target is None or port != target.port:
            raise httpcore.ConnectError(f"refusing to connect to {host}:{port}: not vetted by the guard")
        error: Exception | None = None
        for address in target.addresses:
            try:
                return _DeadlineStream(self.connector(address, port, self.remaining(timeout)), self)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        raise httpcore.ConnectError("unix sockets are never fetched from")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: PinnedBackend) -> None:
        self._inner, self._backend = inner, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.remaining(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.remaining(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._backend.remaining(timeout))
        return _DeadlineStream(inner, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
