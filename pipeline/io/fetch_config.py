"""The URL image fetcher's config (issue 10): timeouts, limits, retries, the allow-list, image sizing.

Defaults are safe: nothing but public unicast addresses is reachable. `allow_hosts` (host names or IP
literals, compared after canonicalisation: `127.1` is `127.0.0.1`) and `allow_networks` (CIDR) open
private addresses on purpose; the tests allow 127.0.0.1. Used by pipeline/io/fetch.py.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pipeline.config import check
from pipeline.io.net_guard import Policy


@dataclass(frozen=True)
class FetchConfig:
    """Fetcher knobs; the defaults are safe (no private address is reachable)."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    # Per attempt, headers and body included: the bound for a server that trickles bytes.
    total_timeout_s: float = 30.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    retries: int = 2
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    max_retry_after_s: float = 30.0
    per_host_concurrency: int = 4
    max_concurrency: int = 16
    # Host names or IP literals, and CIDR networks, that may be private (tests: 127.0.0.1).
    allow_hosts: tuple[str, ...] = ()
    allow_networks: tuple[str, ...] = ()
    user_agent: str = "fusegen-image-fetcher/1"
    max_url_chars: int = 2048
    max_side: int = 1024
    max_pixels: int = 40_000_000
    min_side: int = 8
    max_aspect: float = 20.0
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "read_timeout_s", "total_timeout_s", "backoff_s", "max_backoff_s"):
            check(getattr(self, name) > 0, "fetch", name, f"must be > 0 (got {getattr(self, name)})")
        for name in ("max_bytes", "per_host_concurrency", "max_concurrency", "max_url_chars", "max_side"):
            check(getattr(self, name) >= 1, "fetch", name, f"must be >= 1 (got {getattr(self, name)})")
        for name in ("max_redirects", "retries", "max_retry_after_s"):
            check(getattr(self, name) >= 0, "fetch", name, f"must be >= 0 (got {getattr(self, name)})")
        check(self.max_pixels > 0 and self.min_side >= 1, "fetch", "max_pixels", "and min_side must be > 0")
        check(self.max_aspect >= 1, "fetch", "max_aspect", f"must be >= 1 (got {self.max_aspect})")
        quality = self.jpeg_quality
        check(1 <= quality <= 95, "fetch", "jpeg_quality", f"must be in 1..95 (got {quality})")
        for net in self.allow_networks:
            try:
                ipaddress.ip_network(net)
            except ValueError:
                why = f"entries must be CIDR networks like 10.0.0.0/8 or 127.0.0.1/32 (got {net!r})"
                check(False, "fetch", "allow_networks", why)

    def policy(self) -> Policy:
        """The guard's view of the allow-list, canonicalised (IP literals as `ipaddress` prints them)."""
        hosts = set()
        for host in self.allow_hosts:
            try:
                hosts.add(str(ipaddress.ip_address(host.strip("[]"))))
            except ValueError:
                hosts.add(host.lower().rstrip("."))
        nets = tuple(ipaddress.ip_network(n) for n in self.allow_networks)
        return Policy(frozenset(hosts), nets, self.max_url_chars)
