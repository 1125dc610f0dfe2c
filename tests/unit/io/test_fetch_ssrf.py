"""SSRF probes against pipeline/io/fetch.py with the DEFAULT config (no allow-list).

No test here opens a socket: socket.socket.connect and socket.create_connection are patched to fail the
test, names go through a fake resolver, and the fetcher's connector is a fake "internet" that answers
only for known public addresses (with a canned redirect to the next URL of a generated chain) and
records every address it was asked to dial. Property (Hypothesis): whatever the spelling of the URL and
of every redirect, only public addresses are ever dialled, and a refused fetch fails with a reason.
"""

from __future__ import annotations

import ipaddress
import socket
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from unittest import mock

import httpcore
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.io.fetch import FetchConfig, Fetcher

PUBLIC = [
    ipaddress.ip_address(a) for a in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.4.4")
]
BAD = [
    ipaddress.ip_address(a)
    for a in (
        "127.0.0.1", "127.9.8.7", "10.0.0.1", "172.16.0.1", "192.168.0.1", "169.254.169.254", "169.254.170.2",
        "100.100.100.200", "100.64.1.1", "0.0.0.0", "224.0.0.251", "255.255.255.255", "::1", "::", "fe80::1",
        "fc00::1", "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::", "fec0::1", "ff02::1", "::127.0.0.1", "2001:db8::1",
    )
]  # fmt: skip


class FakeInternet:
    """Connector: public addresses answer with a redirect to the next URL of `chain`, then 404."""

    def __init__(self, chain: list[str] = (), down: Callable[[], bool] = lambda: False) -> None:
        self.chain = list(chain)
        self.down = down
        self.dialled: list[str] = []

    def __call__(self, address: str, port: int, timeout: float | None) -> httpcore.NetworkStream:
        self.dialled.append(address)
        if ipaddress.ip_address(address.split("%")[0]) not in PUBLIC:
            raise httpcore.ConnectError(f"test: dialled a non-public address {address}")
        # A public address that does not answer makes the fetcher try the host's next address.
        if self.down():
            raise httpcore.ConnectError(f"test: {address} is down")
        if self.chain:
            location = self.chain.pop(0).encode("utf-8", "surrogateescape")
            head = b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n"
        else:
            head = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        return httpcore.MockStream([head])


@contextmanager
def no_sockets():
    def refuse(*args, **kwargs):
        raise AssertionError(f"a test opened a real connection: {args[1:]}")

    with (
        mock.patch.object(socket.socket, "connect", refuse),
        mock.patch.object(socket.socket, "connect_ex", refuse),
        mock.patch.object(socket, "create_connection", refuse),
    ):
        yield


DNS = {
    "metadata.test": ["169.254.169.254"],
    "alibaba.test": ["100.100.100.200"],
    "aws6.test": ["fd00:ec2::254"],
    "lan.test": ["192.168.1.20"],
    "linklocal.test": ["fe80::1"],
    "localhost": ["127.0.0.1", "::1"],
    "mixed.test": ["93.184.216.34", "10.0.0.7"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "public.test": ["93.184.216.34"],
}


def fake_dns(host: str, port: int) -> list[str]:
    return DNS.get(host, ["127.0.0.1"])


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/", "blocked"),
        ("http://2130706433/", "blocked"),
        ("http://0177.0.0.1/", "bad_url"),
        ("http://0x7f.0.0.1/", "blocked"),
        ("http://127.1/", "blocked"),
        ("http://[::1]/", "blocked"),
        ("http://[::ffff:127.0.0.1]/", "blocked"),
        ("http://[::ffff:7f00:1]/", "blocked"),
        ("http://169.254.169.254/latest/meta-data/", "blocked"),
        ("http://[fd00:ec2::254]/", "blocked"),
        ("http://100.100.100.200/", "blocked"),
        ("http://10.0.0.1/", "blocked"),
        ("http://[fe80::1%25eth0]/", "blocked"),
        ("http://localhost/", "blocked"),
        ("http://metadata.test/", "blocked"),
        ("http://alibaba.test/", "blocked"),
        ("http://aws6.test/", "blocked"),
        ("http://lan.test/", "blocked"),
        ("http://linklocal.test/", "blocked"),
        ("http://mixed.test/", "blocked"),
        ("http://mapped.test/", "blocked"),
        ("http://user:pass@public.test/", "credentials"),
        ("http://public.test@127.0.0.1/", "credentials"),
        ("file:///etc/passwd", "scheme"),
        ("ftp://public.test/a.jpg", "scheme"),
        ("data:image/png;base64,iVBORw0KGgo=", "scheme"),
        ("gopher://public.test:70/", "scheme"),
        ("http://public.test/" + "a" * 3000, "url_too_long"),
    ],
)
def test_default_config_refuses_before_any_connection(url, kind):
    internet = FakeInternet()
    with no_sockets(), Fetcher(FetchConfig(), resolver=fake_dns, connector=internet) as fetcher:
        result = fetcher.fetch(url)
    assert (result.error, internet.dialled) == (f"error:fetch_{kind}", [])


def test_a_public_site_redirecting_to_metadata_is_refused_after_one_connection():
    internet = FakeInternet(["http://metadata.test/latest/meta-data/iam"])
    with no_sockets(), Fetcher(FetchConfig(), resolver=fake_dns, connector=internet) as fetcher:
        result = fetcher.fetch("http://public.test/a.jpg")
    assert result.error == "error:fetch_blocked" and internet.dialled == ["93.184.216.34"]
    assert [a.outcome for a in result.attempts] == ["redirect", "blocked"]


# --- Hypothesis: odd spellings never reach a non-public address ---------------------------------------------

# Half the draws public, so that generated chains get past the first hop often enough to test redirects.
ADDRESSES = st.sampled_from(PUBLIC) | st.sampled_from(BAD)
RESOLVED = st.lists(st.sampled_from(PUBLIC), min_size=1, max_size=3) | st.lists(
    ADDRESSES, min_size=1, max_size=3
)


@st.composite
def ipv4_spelling(draw, ip: ipaddress.IPv4Address) -> str:
    n, parts = int(ip), list(ip.packed)

    def part(value: int) -> str:
        return draw(
            st.sampled_from([str(value), f"0{value:o}", f"0x{value:x}", f"0X{value:X}", f"00{value:o}"])
        )

    form = draw(st.sampled_from(["dotted", "int", "short3", "short2"]))
    if form == "int":
        text = part(n)
    elif form == "short3":
        text = ".".join([part(parts[0]), part(parts[1]), part(n & 0xFFFF)])
    elif form == "short2":
        text = ".".join([part(parts[0]), part(n & 0xFFFFFF)])
    else:
        text = ".".join(part(p) for p in parts)
    return text + draw(st.sampled_from(["", "."]))


# Built and validated at import: `from_regex` imports Hypothesis's regex module on first use, and that import
# (rewritten by pytest, Hypothesis being a plugin) parsed deep inside a draw hit CPython 3.11.7's "AST
# constructor recursion depth mismatch" SystemError in CI.
HOST_NAMES = st.sampled_from(sorted(DNS)) | st.from_regex(r"[a-zA-Zü0-9-]{1,12}(\.[a-z]{2,4}){0,2}\.?", fullmatch=True)
HOST_NAMES.validate()


@st.composite
def host_spelling(draw) -> str:
    ip = draw(ADDRESSES)
    kind = draw(st.sampled_from(["ip"] * 4 + ["name"] * 4 + ["junk"]))
    if kind == "name":
        return draw(HOST_NAMES)
    if kind == "junk":
        return draw(
            st.text(st.sampled_from(list("0123456789abcdefxX.:[]%@#?/\\ ü-_")), min_size=1, max_size=24)
        )
    if ip.version == 4:
        return draw(ipv4_spelling(ip))
    text = draw(st.sampled_from([ip.compressed, ip.exploded, ip.compressed.upper()]))
    if ip.ipv4_mapped is not None and draw(st.booleans()):
        text = f"::ffff:{ip.ipv4_mapped}"
    return f"[{text}]"


@st.composite
def url_spelling(draw) -> str:
    # Mostly well-formed around the host, so that most examples are decided by the host and its addresses.
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "hTTps"] * 4 + ["ftp", "file", "gopher"]))
    userinfo = draw(st.sampled_from([""] * 12 + ["u:p@", "public.test@"]))
    port = draw(st.sampled_from(["", "", "", ":80", ":8080", ":443"] * 2 + [":0", ":65536", ":-1"]))
    path = draw(st.sampled_from(["/", "/a.jpg", "/x?y=1#frag", "", "/..%2f"]))
    return f"{scheme}://{userinfo}{draw(host_spelling())}{port}{path}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=url_spelling(),
    chain=st.lists(url_spelling() | st.sampled_from(["/same-host", "//lan.test/x"]), max_size=4),
    data=st.data(),
)
def test_generated_urls_and_redirects_only_ever_dial_public_addresses(first, chain, data):
    # Drawn up front: the fetcher calls the resolver on its DNS thread, where Hypothesis cannot draw.
    answers = data.draw(st.lists(RESOLVED, min_size=6, max_size=6), label="dns answers")

    def resolver(host: str, port: int) -> list[str]:
        return [str(a) for a in answers[zlib.crc32(host.encode()) % len(answers)]]

    internet = FakeInternet(chain, down=lambda: data.draw(st.booleans(), label="down"))
    with no_sockets(), Fetcher(FetchConfig(retries=0), resolver=resolver, connector=internet) as fetcher:
        result = fetcher.fetch(first)
    assert all(ipaddress.ip_address(a.split("%")[0]) in PUBLIC for a in internet.dialled), internet.dialled
    assert result.error.startswith("error:fetch_")
