"""The safe URL image fetcher (issue 10): http(s) GET with an SSRF guard, limits and retries, then decode.

`Fetcher(FetchConfig()).fetch(url)` returns a `FetchResult`: on success the normalised image (EXIF
orientation applied, RGB, first frame, longer side at most `max_side`; io/images.fit_image) with its
format, size and final URL; on failure `error` = `error:fetch_<kind>`. Every hop, redirects included,
goes through io/net_guard.vet_url and is dialled only at the vetted addresses (io/pinned.py). Limits:
connect and read timeouts, a total deadline per attempt, `max_bytes` counted while streaming (a
Content-Length over it is refused up front, a smaller one is not trusted), `max_redirects`, a
content-type check and a magic-byte check before Pillow sees a byte. 429, 5xx, refused connections and
dropped connections are retried `retries` times with exponential backoff, honouring Retry-After (capped);
timeouts are not retried. At most `per_host_concurrency` requests run per host at once. DNS lookups
run in a small thread pool so a resolver that never answers costs `connect_timeout_s`, not a hang.
`fetch` never raises for anything a URL or a server can do. `store_fetched` puts a result in the run's
content-addressed ImageStore (same bytes, one file).
"""

from __future__ import annotations

import email.utils
import random
import ssl
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpcore
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from pipeline.io.fetch_config import FetchConfig
from pipeline.io.image_store import ImageStore
from pipeline.io.images import ImageError, ImageLimits, fit_image, sniff_format
from pipeline.io.net_guard import FetchError, Resolver, Target, system_resolver, vet_url
from pipeline.io.pinned import Connector, PinnedBackend, socket_connector

REDIRECTS = (301, 302, 303, 307, 308)
# Servers often label images generically; the magic-byte check decides. text/html etc. are refused.
GENERIC_TYPES = ("", "application/octet-stream", "binary/octet-stream")

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Attempt", "FetchConfig", "FetchResult", "Fetcher", "retry_after_seconds", "store_fetched"]


@dataclass(frozen=True)
class Attempt:
    """One request: the URL asked for, the HTTP status (None when none came) and what happened."""

    url: str
    status: int | None
    outcome: str


@dataclass(frozen=True)
class FetchResult:
    url: str
    error: str = ""
    detail: str = ""
    data: bytes | None = None
    format: str = ""
    width: int = 0
    height: int = 0
    final_url: str = ""
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.error


class _Retryable(FetchError):
    def __init__(self, kind: str, detail: str = "", retry_after: str | None = None) -> None:
        super().__init__(kind, detail, None)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delay-seconds or HTTP-date); None when absent or junk."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(when - (time.time() if now is None else now), 0.0)


class Fetcher:
    """Thread-safe; one per process (a Ray actor) holding one connection pool.

    Args:
        resolver: `(host, port) -> addresses`; tests map made-up names to private addresses.
        connector: `(address, port, timeout) -> stream`; tests count or refuse connections.
        ssl_context: trust for https (default: httpcore's, certifi's CAs); a private CA, or a test's.
    """

    def __init__(
        self,
        cfg: FetchConfig,
        resolver: Resolver = system_resolver,
        connector: Connector = socket_connector,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.cfg = cfg
        self.policy = cfg.policy()
        self.resolver = resolver
        self.limits = ImageLimits(max_bytes=cfg.max_bytes, max_pixels=cfg.max_pixels, min_side=cfg.min_side)
        self.backend = PinnedBackend(connector)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=cfg.max_concurrency,
            network_backend=self.backend,
            retries=0,
        )
        self._slots: dict[str, threading.BoundedSemaphore] = defaultdict(
            lambda: threading.BoundedSemaphore(cfg.per_host_concurrency)
        )
        self._slots_lock = threading.Lock()
        # getaddrinfo has no timeout: lookups run here so a fetch can stop waiting for a stuck one.
        self._dns = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fusegen-dns")
        self._headers = [(b"User-Agent", cfg.user_agent.encode()), (b"Accept", b"image/*")]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()
        self._dns.shutdown(wait=False, cancel_futures=True)

    def fetch_many(self, urls: list[str]) -> list[FetchResult]:
        """Fetch in parallel (at most `max_concurrency`, and `per_host_concurrency` per host); input order."""
        with ThreadPoolExecutor(max_workers=min(self.cfg.max_concurrency, max(len(urls), 1))) as pool:
            return list(pool.map(self.fetch, urls))

    def fetch(self, url: str) -> FetchResult:
        attempts: list[Attempt] = []
        retrying = Retrying(
            stop=stop_after_attempt(self.cfg.retries + 1),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        try:
            final_url, body = retrying(self._attempt, url, attempts)
            fitted = fit_image(
                body, self.limits, self.cfg.max_side, self.cfg.max_aspect, self.cfg.jpeg_quality
            )
        except (FetchError, ImageError) as exc:
            return FetchResult(url, f"error:fetch_{exc.kind}", str(exc)[:300], attempts=tuple(attempts))
        return FetchResult(
            url,
            data=fitted.data,
            format=fitted.format,
            width=fitted.width,
            height=fitted.height,
            final_url=final_url,
            attempts=tuple(attempts),
        )

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after_seconds(getattr(exc, "retry_after", None))
        if asked is not None:
            return min(asked, self.cfg.max_retry_after_s)
        base = min(self.cfg.backoff_s * 2 ** (state.attempt_number - 1), self.cfg.max_backoff_s)
        return base + random.uniform(0, self.cfg.backoff_s)

    def _attempt(self, url: str, attempts: list[Attempt]) -> tuple[str, bytes]:
        """One attempt: follow redirects (each hop vetted) under one deadline; (final URL, body)."""
        deadline = time.monotonic() + self.cfg.total_timeout_s
        current = url
        for _ in range(self.cfg.max_redirects + 1):
            status: int | None = None
            try:
                target = vet_url(current, self.policy, self._resolve)
                status, location, body = self._get(target, deadline)
                if status not in REDIRECTS:
                    attempts.append(Attempt(current, status, "ok"))
                    return str(target.url), body
                if not location:
                    raise FetchError("redirect_no_location", f"HTTP {status} without a Location header")
            except FetchError as exc:
                attempts.append(Attempt(current, exc.status or status, exc.kind))
                raise
            attempts.append(Attempt(current, status, "redirect"))
            try:
                current = str(target.url.join(location))
            except Exception as exc:  # noqa: BLE001 - httpx raises several types for junk Locations
                raise FetchError("bad_url", f"Location {location[:100]!r}: {type(exc).__name__}") from None
        raise FetchError(
            "too_many_redirects", f"more than {self.cfg.max_redirects} redirects from {url[:200]}"
        )

    def _resolve(self, host: str, port: int) -> list[str]:
        try:
            return list(self._dns.submit(self.resolver, host, port).result(self.cfg.connect_timeout_s))
        except FutureTimeout:
            raise OSError(f"no answer within {self.cfg.connect_timeout_s:g} s") from None

    def _slot(self, host: str) -> threading.BoundedSemaphore:
        with self._slots_lock:
            return self._slots[host]

    def _get(self, target: Target, deadline: float) -> tuple[int, str, bytes]:
        """One GET to the vetted target: (status, Location, body); raises FetchError for the rest."""
        timeouts = {
            "connect": self.cfg.connect_timeout_s,
            "read": self.cfg.read_timeout_s,
            "write": self.cfg.read_timeout_s,
            "pool": self.cfg.total_timeout_s,
        }
        slot = self._slot(target.host)
        if not slot.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise FetchError("deadline", f"no free per-host slot for {target.host} before the deadline")
        self.backend.pin(target, deadline)
        try:
            with self._pool.stream(
                "GET", str(target.url), headers=self._headers, extensions={"timeout": timeouts}
            ) as response:
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
                try:
                    return response.status, headers.get("location", ""), self._body(response, headers)
                except FetchError as exc:
                    exc.status = response.status
                    raise
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise _transport_error(exc, deadline) from None
        finally:
            self.backend.unpin()
            slot.release()

    def _body(self, response: httpcore.Response, headers: dict[str, str]) -> bytes:
        status = response.status
        if status in REDIRECTS:
            return b""
        if status == 429 or status >= 500:
            raise _Retryable(f"http_{status}", retry_after=headers.get("retry-after"))
        if status != 200:
            raise FetchError(f"http_{status}")
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if not (media.startswith("image/") or media in GENERIC_TYPES) or media == "image/svg+xml":
            raise FetchError("content_type", f"content-type {media!r} is not a raster image")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.cfg.max_bytes:
            raise FetchError("too_large", f"Content-Length {declared} > {self.cfg.max_bytes}")
        chunks, size = [], 0
        for chunk in response.iter_stream():
            size += len(chunk)
            if size > self.cfg.max_bytes:
                raise FetchError("too_large", f"body over {self.cfg.max_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body:
            raise FetchError("empty", "zero-byte body")
        if sniff_format(body) is None:
            raise FetchError("not_an_image", f"first bytes {body[:16]!r} are no known image format")
        return body


def _transport_error(exc: Exception, deadline: float) -> FetchError:
    detail = f"{type(exc).__name__}: {str(exc)[:120]}"
    if time.monotonic() >= deadline:
        return FetchError("deadline", detail)
    if isinstance(exc, httpcore.TimeoutException):
        return FetchError("timeout", detail)
    if isinstance(exc, httpcore.ConnectError):
        return _Retryable("connect", detail)
    # The server dropped the connection mid-answer (ReadError, RemoteProtocolError): worth a retry.
    return _Retryable("connection", detail)


def store_fetched(result: FetchResult, store: ImageStore) -> dict | None:
    """Put a successful result in the content-addressed store (once per distinct content); its ref."""
    if not result.ok or result.data is None:
        return None
    return store.put(result.data, result.format, result.width, result.height)
