"""The SSRF guard of the URL image fetcher (issue 10, DESIGN.md §6): parse a URL, resolve its host, vet
every address.

`vet_url(url, policy, resolver)` returns a `Target` (canonical URL, host, port and the vetted addresses)
or raises `FetchError(kind)`. The fetcher connects only to `Target.addresses` (pipeline/io/fetch.py pins
them in its network backend), so no second DNS lookup can swap in another address. Rules:
- http and https only; user:password in the URL is refused (never silently stripped); over-long URLs
  and hosts that are not valid DNS names or IP literals are refused.
- IPv4 literals are read the way resolvers and browsers read them (decimal `2130706433`, octal
  `0177.0.0.1`, hex `0x7f.0.0.1`, short `127.1`, a trailing dot); a host whose last label is numeric
  but is no valid IPv4 address is refused rather than sent to DNS.
- An address is refused when it is loopback, private, link-local, multicast, reserved, unspecified,
  not globally routable, or a cloud metadata address; IPv4 embedded in IPv6 (mapped, NAT64, 6to4,
  Teredo) is unwrapped and vetted too. A name is refused when ANY of its addresses is refused.
- `allow_hosts` (exact host names or IP literals) and `allow_networks` (CIDR) lift the refusal: tests
  allow 127.0.0.1; the default allows nothing.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> address strings; the default asks the system resolver.
Resolver = Callable[[str, int], Sequence[str]]

# Cloud metadata endpoints not already covered by link-local/private (AWS IPv6, Alibaba, Oracle...).
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_NUMERIC_PART = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


class FetchError(Exception):
    """A refused or failed fetch; `kind` becomes `error:fetch_<kind>`."""

    def __init__(self, kind: str, detail: str = "", status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail
        # The HTTP status of the answer that failed (None when no answer came).
        self.status = status


@dataclass(frozen=True)
class Policy:
    """What the guard lets through besides public addresses (FetchConfig builds it)."""

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_url_chars: int = 2048


@dataclass(frozen=True)
class Target:
    url: httpx.URL
    host: str
    port: int
    addresses: tuple[str, ...]


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(info[4][0] for info in infos))


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a resolver would read in `host` (1-4 dec/oct/hex parts), else None.

    Raises:
        FetchError: `bad_url` when the last label is numeric but the whole is no valid IPv4 address
            (WHATWG: such a host is never a DNS name).
    """
    parts = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not parts or not _NUMERIC_PART.match(parts[-1]):
        return None
    if len(parts) > 4 or not all(_NUMERIC_PART.match(p) for p in parts):
        raise FetchError("bad_url", f"host {host!r} ends in a number but is not an IPv4 address")
    try:
        values = [_ipv4_part(p) for p in parts]
    except ValueError:
        raise FetchError("bad_url", f"host {host!r} is not a valid IPv4 address") from None
    head, last = values[:-1], values[-1]
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        raise FetchError("bad_url", f"host {host!r} is out of the IPv4 range")
    number = last + sum(v << (8 * (3 - i)) for i, v in enumerate(head))
    return ipaddress.IPv4Address(number)


def _ipv4_part(part: str) -> int:
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    # A leading zero means octal to inet_aton and to browsers ("08" is then invalid).
    return int(part, 8) if len(part) > 1 and part.startswith("0") else int(part)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses a packet to `ip` may end up at: mapped, NAT64, 6to4 and Teredo forms."""
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if any(ip in net for net in NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def refusal(ip: IPAddress) -> str:
    """Why `ip` must not be fetched from ("" when it is a public unicast address)."""
    if ip.version == 6 and ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%")[0])
    if ip in METADATA:
        return "cloud metadata"
    if ip.version == 6:
        inner = embedded_ipv4(ip)
        bad = [f"{a} inside {ip}: {refusal(a)}" for a in inner if refusal(a)]
        if bad:
            return bad[0]
        # A mapped or NAT64 address of a public IPv4 is as good as that address.
        if ip.ipv4_mapped is not None or any(ip in net for net in NAT64):
            return ""
    for name in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    if ip.version == 6 and ip.is_site_local:
        return "site-local"
    return "" if ip.is_global else "not globally routable"


def canonical_host(url: httpx.URL) -> tuple[str, IPAddress | None]:
    """(host as compared with allow_hosts, IP literal or None); raises FetchError(bad_url)."""
    raw = url.raw_host.decode("ascii", "replace").lower()
    if ":" in raw:
        try:
            ip6 = ipaddress.IPv6Address(raw.replace("%25", "%"))
        except ValueError:
            raise FetchError("bad_url", f"host {raw!r} is not a valid IPv6 address") from None
        return str(ip6), ip6
    ip4 = parse_ipv4(raw)
    if ip4 is not None:
        return str(ip4), ip4
    if not _HOST_NAME.match(raw.rstrip(".")):
        raise FetchError("bad_url", f"host {raw[:80]!r} is not a valid host name")
    return raw.rstrip("."), None


def parse_url(url: str, policy: Policy) -> tuple[httpx.URL, str, int, IPAddress | None]:
    """Check scheme, credentials, length and host; return (URL, canonical host, port, IP literal)."""
    if len(url) > policy.max_url_chars:
        raise FetchError("url_too_long", f"{len(url)} characters > {policy.max_url_chars}")
    scheme = url.split(":", 1)[0].strip().lower() if ":" in url else ""
    if scheme not in ("http", "https"):
        raise FetchError("scheme", f"only http and https are fetched (got {scheme or 'no scheme'!r})")
    try:
        parsed = httpx.URL(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise FetchError("bad_url", str(exc)[:120]) from None
    if parsed.scheme not in ("http", "https"):
        raise FetchError("scheme", f"only http and https are fetched (parsed {parsed.scheme!r})")
    if parsed.userinfo:
        raise FetchError("credentials", "URLs with user:password are refused, not stripped")
    if not parsed.raw_host:
        raise FetchError("bad_url", "no host")
    if not 0 < port < 65536:
        raise FetchError("bad_url", f"port {port} out of range")
    host, literal = canonical_host(parsed)
    return parsed, host, port, literal


def is_allowed(host: str, ip: IPAddress, policy: Policy) -> bool:
    return host in policy.allow_hosts or any(
        ip in net for net in policy.allow_networks if ip.version == net.version
    )


def vet_url(url: str, policy: Policy, resolver: Resolver = system_resolver) -> Target:
    """Parse `url`, resolve its host (IP literals are not looked up) and vet every address.

    Raises:
        FetchError: kinds `url_too_long`, `scheme`, `bad_url`, `credentials`, `dns`, `blocked`.
    """
    parsed, host, port, literal = parse_url(url, policy)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
        # Send the canonical spelling: the Host header and TLS name then match the address dialled.
        parsed = parsed.copy_with(host=str(literal))
    else:
        try:
            found = resolver(host, port)
            addresses = [ipaddress.ip_address(a) for a in found]
        except (OSError, UnicodeError, ValueError) as exc:
            raise FetchError("dns", f"{host}: {str(exc)[:100]}") from None
        if not addresses:
            raise FetchError("dns", f"{host}: no addresses")
    for ip in addresses:
        why = refusal(ip)
        if why and not is_allowed(host, ip, policy):
            raise FetchError("blocked", f"{host} -> {ip} ({why})")
    return Target(parsed, host, port, tuple(str(ip) for ip in addresses))
