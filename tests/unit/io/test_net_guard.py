"""pipeline/io/net_guard.py: URL parsing, address vetting and the allow-list (no network: a fake resolver)."""

from __future__ import annotations

import ipaddress

import pytest

from pipeline.io.net_guard import FetchError, Policy, parse_ipv4, refusal, vet_url

DEFAULT = Policy()
PUBLIC_V4 = "93.184.216.34"


def no_lookup(host: str, port: int) -> list[str]:
    raise AssertionError(f"an IP literal must not be looked up (asked for {host})")


def fake_dns(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"fake DNS: no such name {host}")
        return table[host]

    return resolve


def refused_kind(url: str, policy: Policy = DEFAULT, resolver=no_lookup) -> str:
    with pytest.raises(FetchError) as err:
        vet_url(url, policy, resolver)
    return err.value.kind


# --- every spelling of loopback is an IP literal, read as a resolver reads it, and refused ---------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://2130706433/",
        "http://0x7f.0.0.1/",
        "http://0x7F000001/",
        "http://017700000001/",
        "http://127.1/",
        "http://127.0.1/",
        "http://127.0.0.1./",
        "http://[::1]/",
        "http://[0:0:0:0:0:0:0:1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::1]/",
        "http://[::]/",
        "http://0/",
        "http://0.0.0.0/",
        "https://127.0.0.1:8443/x.jpg",
        "HTTP://127.0.0.1/",
    ],
)
def test_loopback_in_every_spelling_is_blocked_without_a_lookup(url):
    assert refused_kind(url) == "blocked"


def test_octal_dotted_loopback_is_refused_as_a_bad_url():
    # httpx rejects a dotted quad with leading zeros outright; it never reaches a resolver either way.
    assert refused_kind("http://0177.0.0.1/") in {"blocked", "bad_url"}


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("169.254.43518", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("0x", "0.0.0.0"),
        ("1.2.3.4.", "1.2.3.4"),
        ("example.com", None),
        ("1.example", None),
    ],
)
def test_parse_ipv4_reads_inet_aton_spellings(host, expected):
    got = parse_ipv4(host)
    assert (str(got) if got else None) == expected


@pytest.mark.parametrize(
    "host", ["08.0.0.1", "1.2.3.4.5", "256.0.0.1", "1.16777216", "example.1", "4294967296"]
)
def test_a_host_ending_in_a_number_that_is_no_ipv4_is_a_bad_url(host):
    assert refused_kind(f"http://{host}/") == "bad_url"


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("100.64.0.1", "not globally routable"),
        ("224.0.1.1", "multicast"),
        ("ff02::1", "multicast"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fec0::1", "site-local"),
        ("::", "unspecified"),
        ("240.0.0.1", "private"),
        ("2001:db8::1", "private"),
    ],
)
def test_refusal_names_the_reason(address, why):
    assert why in refusal(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
        "2002:0a00:0001::",
    ],
)
def test_ipv4_embedded_in_ipv6_is_unwrapped_and_refused(address):
    assert "inside" in refusal(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", [PUBLIC_V4, "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert refusal(ipaddress.ip_address(address)) == ""


def test_a_name_with_a_public_and_a_private_address_is_blocked():
    dns = fake_dns({"mixed.test": [PUBLIC_V4, "10.0.0.7"]})
    assert refused_kind("http://mixed.test/a.jpg", resolver=dns) == "blocked"


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("metadata.test", "169.254.169.254"),
        ("alibaba.test", "100.100.100.200"),
        ("v6meta.test", "fd00:ec2::254"),
        ("lan.test", "192.168.0.10"),
        ("linklocal.test", "fe80::1"),
        ("mapped.test", "::ffff:127.0.0.1"),
    ],
)
def test_a_name_resolving_to_a_private_or_metadata_address_is_blocked(name, address):
    assert refused_kind(f"http://{name}/", resolver=fake_dns({name: [address]})) == "blocked"


def test_a_public_name_is_vetted_to_its_addresses():
    target = vet_url("https://cdn.test/img.jpg?x=1", DEFAULT, fake_dns({"cdn.test": [PUBLIC_V4]}))
    assert (target.host, target.port, target.addresses) == ("cdn.test", 443, (PUBLIC_V4,))


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "gopher://x:70/",
        "javascript:alert(1)",
        "//example.com/a.jpg",
        "example.com/a.jpg",
        "",
    ],
)
def test_non_http_schemes_are_refused(url):
    assert refused_kind(url) == "scheme"


def test_credentials_in_the_url_are_refused_not_stripped():
    assert refused_kind("http://user:pass@cdn.test/a.jpg", resolver=fake_dns({"cdn.test": [PUBLIC_V4]})) == (
        "credentials"
    )


def test_a_very_long_url_is_refused_before_parsing():
    assert refused_kind("http://cdn.test/" + "a" * 5000) == "url_too_long"


@pytest.mark.parametrize(
    "url",
    [
        "http:///a.jpg",
        "http://exa mple.com/",
        "http://a%2eb/",
        "http://[::1/",
        "http://host:99999/",
        "http://-a-/",
    ],
)
def test_malformed_hosts_are_bad_urls(url):
    assert refused_kind(url) == "bad_url"


def test_idna_hosts_are_looked_up_in_their_ascii_form():
    asked = []

    def dns(host: str, port: int) -> list[str]:
        asked.append(host)
        return [PUBLIC_V4]

    vet_url("http://Bücher.example/bild.jpg", DEFAULT, dns)
    assert asked == ["xn--bcher-kva.example"]


def test_the_allow_list_admits_exactly_its_hosts_and_networks():
    policy = Policy(frozenset({"127.0.0.1"}), (ipaddress.ip_network("10.9.0.0/16"),))
    dns = fake_dns({"inside.test": ["10.9.1.2"], "outside.test": ["10.8.1.2"]})
    assert vet_url("http://127.1:8080/", policy, no_lookup).addresses == ("127.0.0.1",)
    assert vet_url("http://inside.test/", policy, dns).addresses == ("10.9.1.2",)
    assert refused_kind("http://outside.test/", policy, dns) == "blocked"
    assert refused_kind("http://127.0.0.2/", policy) == "blocked"
    assert refused_kind("http://[::1]/", policy) == "blocked"


def test_a_literal_host_is_sent_in_its_canonical_spelling():
    policy = Policy(frozenset({"127.0.0.1"}))
    assert str(vet_url("http://2130706433:81/a.jpg", policy, no_lookup).url) == "http://127.0.0.1:81/a.jpg"


def test_a_resolver_failure_is_a_dns_error():
    assert refused_kind("http://nowhere.test/", resolver=fake_dns({})) == "dns"
