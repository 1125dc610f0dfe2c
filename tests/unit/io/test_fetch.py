"""pipeline/io/fetch.py against a local image server on 127.0.0.1 (allow-listed): real and broken images,
slow and trickling bodies, redirects (also to private addresses via a fake resolver), retries, limits."""

from __future__ import annotations

import io
import socket
import ssl
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import PipelineConfigError
from pipeline.io.fetch import FetchConfig, Fetcher, retry_after_seconds, store_fetched
from pipeline.io.image_store import ImageStore
from pipeline.io.pinned import socket_connector
from tests.support.image_server import ImageServer, body, disconnect, hang, redirect, status, trickle
from tests.unit.io.test_images import png_with_header_size

# Generous timeouts: the test machine is shared and a loaded server thread may answer late.
LOCAL = FetchConfig(
    allow_hosts=("127.0.0.1",),
    connect_timeout_s=5.0,
    read_timeout_s=5.0,
    total_timeout_s=10.0,
    retries=2,
    backoff_s=0.01,
    max_backoff_s=0.02,
    max_side=64,
)
# For the tests of timeouts themselves.
SHORT = replace(LOCAL, read_timeout_s=0.5, total_timeout_s=1.5)


def jpeg(size=(48, 32), mode="RGB", **save) -> bytes:
    pixels = np.random.RandomState(1).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **save)
    return buf.getvalue()


def png(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save)
    return buf.getvalue()


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


class Connects:
    """A connector that counts (and performs) connections."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, address: str, port: int, timeout: float | None):
        self.calls.append((address, port))
        return socket_connector(address, port, timeout)


@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        yield srv


@pytest.fixture
def connects() -> Connects:
    return Connects()


@pytest.fixture
def fetcher(connects):
    with Fetcher(LOCAL, connector=connects) as f:
        yield f


def serve(server: ImageServer, path: str, reply) -> str:
    server.route(path, reply)
    return server.url(path)


# --- good images ------------------------------------------------------------------------------------------


def test_a_small_plain_jpeg_comes_back_byte_identical(server, fetcher):
    data = jpeg()
    result = fetcher.fetch(serve(server, "/ok/plain.jpg", body(data)))
    assert (result.error, result.data, result.format, result.width, result.height) == (
        "",
        data,
        "jpeg",
        48,
        32,
    )
    assert result.final_url == server.url("/ok/plain.jpg")
    assert [a.outcome for a in result.attempts] == ["ok"]


def test_a_large_image_is_shrunk_to_max_side_keeping_its_aspect(server, fetcher):
    result = fetcher.fetch(serve(server, "/ok/big.jpg", body(jpeg((640, 320)))))
    assert (result.format, result.width, result.height) == ("jpeg", 64, 32)
    assert decoded(result.data).size == (64, 32)


def test_exif_orientation_is_applied(server, fetcher):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    result = fetcher.fetch(serve(server, "/ok/rotated.jpg", body(jpeg((40, 20), exif=exif.tobytes()))))
    assert (result.width, result.height) == (20, 40)


@pytest.mark.parametrize(
    ("name", "make", "content_type"),
    [
        ("cmyk.jpg", lambda: jpeg(mode="CMYK"), "image/jpeg"),
        ("grey16.png", lambda: png(Image.fromarray(np.full((16, 16), 40000, np.uint16))), "image/png"),
        ("webp.webp", lambda: _webp(), "image/webp"),
    ],
)
def test_odd_modes_and_formats_become_rgb(server, fetcher, name, make, content_type):
    result = fetcher.fetch(serve(server, f"/ok/{name}", body(make(), content_type)))
    assert result.ok, result.detail
    assert decoded(result.data).mode == "RGB"


def _webp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (10, 200, 10)).save(buf, format="WEBP")
    return buf.getvalue()


def test_a_palette_png_with_transparency_is_composited_on_white(server, fetcher):
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (8, 0, 16, 16))
    result = fetcher.fetch(serve(server, "/ok/palette.png", body(png(img, transparency=0), "image/png")))
    rgb = decoded(result.data)
    assert (rgb.mode, rgb.getpixel((0, 0)), rgb.getpixel((12, 4))) == ("RGB", (255, 255, 255), (255, 0, 0))


def test_an_animated_gif_keeps_its_first_frame(server, fetcher, animated_gif):
    result = fetcher.fetch(serve(server, "/ok/anim.gif", body(animated_gif, "image/gif")))
    assert result.format == "png" and decoded(result.data).getpixel((0, 0)) == (255, 0, 0)


def test_generic_content_types_are_accepted_when_the_magic_bytes_say_image(server, fetcher):
    result = fetcher.fetch(serve(server, "/ok/octet", body(jpeg(), "application/octet-stream")))
    assert result.ok


# --- broken images and bad answers: a failed fetch with a reason, never an exception -----------------------


@pytest.mark.parametrize(
    ("name", "reply", "kind"),
    [
        ("truncated.jpg", body(jpeg((64, 64))[:700]), "truncated"),
        ("empty.jpg", body(b""), "empty"),
        ("html.jpg", body(b"<!doctype html><html><body>not found</body></html>"), "not_an_image"),
        ("page.html", body(b"<html></html>", "text/html; charset=utf-8"), "content_type"),
        ("svg", body(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"), "content_type"),
        ("bomb.png", body(png_with_header_size(100_000, 100_000), "image/png"), "decompression_bomb"),
        ("tiny.png", body(png(Image.new("RGB", (1, 1))), "image/png"), "too_small"),
        ("banner.png", body(png(Image.new("RGB", (400, 8))), "image/png"), "aspect_ratio"),
        ("missing.jpg", status(404), "http_404"),
        ("forbidden.jpg", status(403), "http_403"),
    ],
)
def test_bad_bodies_and_answers_fail_with_their_kind(server, fetcher, name, reply, kind):
    result = fetcher.fetch(serve(server, f"/bad/{name}", reply))
    assert (result.ok, result.error, result.data) == (False, f"error:fetch_{kind}", None), result.detail


def test_client_errors_are_not_retried(server, fetcher):
    fetcher.fetch(serve(server, "/bad/once-404.jpg", status(404)))
    assert server.hits("/bad/once-404.jpg") == 1


def test_a_two_gigabyte_content_length_is_refused_before_reading(server, fetcher):
    start = time.monotonic()
    result = fetcher.fetch(serve(server, "/bad/huge.jpg", body(b"\xff\xd8\xff" * 10, content_length=2**31)))
    assert result.error == "error:fetch_too_large" and time.monotonic() - start < 1.0


def test_a_body_over_the_cap_without_content_length_is_cut_while_streaming(server):
    cfg = FetchConfig(allow_hosts=("127.0.0.1",), max_bytes=10_000)
    with Fetcher(cfg) as small:
        result = small.fetch(serve(server, "/bad/stream.jpg", body(jpeg((256, 256)), content_length=None)))
    assert result.error == "error:fetch_too_large"


def test_a_server_that_never_answers_times_out_without_retrying(server):
    start = time.monotonic()
    with Fetcher(SHORT) as fetcher:
        result = fetcher.fetch(serve(server, "/slow/hang.jpg", hang()))
    assert result.error == "error:fetch_timeout" and time.monotonic() - start < SHORT.total_timeout_s
    assert server.hits("/slow/hang.jpg") == 1


def test_a_trickling_body_hits_the_total_deadline(server):
    start = time.monotonic()
    with Fetcher(SHORT) as fetcher:
        result = fetcher.fetch(serve(server, "/slow/trickle.jpg", trickle(interval_s=0.05)))
    elapsed = time.monotonic() - start
    assert result.error == "error:fetch_deadline"
    assert SHORT.total_timeout_s - 0.05 <= elapsed < SHORT.total_timeout_s + 1.0


def test_nothing_listening_is_a_connect_error_after_retries(fetcher, connects):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = fetcher.fetch(f"http://127.0.0.1:{port}/a.jpg")
    assert result.error == "error:fetch_connect" and len(connects.calls) == LOCAL.retries + 1


def test_a_dns_lookup_that_never_returns_is_abandoned(server):
    release = threading.Event()
    cfg = replace(SHORT, connect_timeout_s=0.3)
    with Fetcher(cfg, resolver=lambda host, port: release.wait(5) and []) as fetcher:
        start = time.monotonic()
        result = fetcher.fetch("http://stuck.test/a.jpg")
        elapsed = time.monotonic() - start
        release.set()
    assert result.error == "error:fetch_dns" and elapsed < 1.5


# --- retries ------------------------------------------------------------------------------------------------


def test_5xx_and_dropped_connections_are_retried_then_succeed(server, fetcher):
    url = serve(server, "/retry/flaky.jpg", body(jpeg()))
    server.script("/retry/flaky.jpg", status(503), disconnect())
    result = fetcher.fetch(url)
    assert result.ok and [a.outcome for a in result.attempts] == ["http_503", "connection", "ok"]
    assert [a.status for a in result.attempts] == [503, None, 200]


def test_retries_are_bounded(server, fetcher):
    result = fetcher.fetch(serve(server, "/retry/down.jpg", status(500)))
    assert result.error == "error:fetch_http_500" and server.hits("/retry/down.jpg") == LOCAL.retries + 1


def test_retry_after_is_honoured(server, fetcher):
    url = serve(server, "/retry/busy.jpg", body(jpeg()))
    server.script("/retry/busy.jpg", status(429, retry_after="1"))
    start = time.monotonic()
    result = fetcher.fetch(url)
    assert result.ok and time.monotonic() - start >= 1.0


def test_retry_after_reads_seconds_and_http_dates_and_ignores_junk():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Wed, 02 Dec 2026 00:00:10 GMT", now=1796169600.0) == pytest.approx(10.0)
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


# --- redirects ------------------------------------------------------------------------------------------------


def test_redirects_are_followed_to_the_image(server, fetcher):
    serve(server, "/redir/final.jpg", body(jpeg()))
    serve(server, "/redir/two", redirect("/redir/final.jpg", 301))
    result = fetcher.fetch(serve(server, "/redir/one", redirect(server.url("/redir/two"), 307)))
    assert result.ok and result.final_url == server.url("/redir/final.jpg")
    assert [a.outcome for a in result.attempts] == ["redirect", "redirect", "ok"]


def test_too_many_redirects_fail(server, fetcher):
    result = fetcher.fetch(serve(server, "/redir/loop", redirect("/redir/loop")))
    assert result.error == "error:fetch_too_many_redirects"
    assert server.hits("/redir/loop") == LOCAL.max_redirects + 1


def test_a_redirect_without_location_fails(server, fetcher):
    assert fetcher.fetch(serve(server, "/redir/nowhere", redirect(None))).error == (
        "error:fetch_redirect_no_location"
    )


@pytest.mark.parametrize(
    ("location", "kind"),
    [
        ("http://metadata.test/latest/meta-data/", "blocked"),
        ("http://lan.test/a.jpg", "blocked"),
        ("http://169.254.169.254/latest/meta-data/", "blocked"),
        ("http://[fd00:ec2::254]/", "blocked"),
        ("http://[::ffff:10.0.0.1]/", "blocked"),
        ("http://0x0a.1/", "blocked"),
        ("http://127.0.0.2/", "blocked"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://127.0.0.1:25/", "scheme"),
    ],
)
def test_a_redirect_from_the_allowed_server_to_a_private_address_is_refused(server, connects, location, kind):
    dns = {"metadata.test": ["169.254.169.254"], "lan.test": ["192.168.1.20"]}
    with Fetcher(LOCAL, resolver=lambda host, port: dns[host], connector=connects) as fetcher:
        result = fetcher.fetch(serve(server, f"/ssrf/{kind}-{len(location)}", redirect(location)))
    assert result.error == f"error:fetch_{kind}"
    assert connects.calls == [("127.0.0.1", server.port)]


# --- the guard dials the vetted address only ----------------------------------------------------------------


def test_a_name_is_dialled_at_the_address_that_was_vetted(server, connects):
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])  # a rebinding resolver: the second answer is private
    asked = []

    def rebinding(host: str, port: int) -> list[str]:
        asked.append(host)
        return next(answers)

    cfg = FetchConfig(allow_networks=("127.0.0.0/8",))
    url = serve(server, "/pin/a.jpg", body(jpeg())).replace("127.0.0.1", "images.test")
    with Fetcher(cfg, resolver=rebinding, connector=connects) as fetcher:
        result = fetcher.fetch(url)
    assert result.ok and asked == ["images.test"] and connects.calls == [("127.0.0.1", server.port)]
    assert server.requests[-1].headers["host"] == f"images.test:{server.port}"


def test_an_idna_host_is_fetched_under_its_ascii_name(server):
    cfg = FetchConfig(allow_networks=("127.0.0.0/8",))
    path = "/pin/idna.jpg"
    serve(server, path, body(jpeg()))
    with Fetcher(cfg, resolver=lambda host, port: ["127.0.0.1"] if host == "xn--bcher-kva.test" else []) as f:
        result = f.fetch(f"http://Bücher.test:{server.port}{path}")
    assert result.ok and server.requests[-1].headers["host"].startswith("xn--bcher-kva.test")


# --- concurrency, storage, config -------------------------------------------------------------------------------


def test_per_host_concurrency_is_limited(server):
    urls = [serve(server, f"/conc/{i}.jpg", body(jpeg(), delay_s=0.3)) for i in range(6)]
    cfg = FetchConfig(allow_hosts=("127.0.0.1",), per_host_concurrency=2, max_concurrency=6)
    with Fetcher(cfg) as fetcher:
        results = fetcher.fetch_many(urls)
    assert all(r.ok for r in results) and [r.url for r in results] == urls
    assert server.max_in_flight["/conc"] == 2


def test_the_same_image_at_two_urls_is_stored_once(server, fetcher, tmp_path):
    data = jpeg((30, 30))
    store = ImageStore.from_uri(str(tmp_path / "run"))
    refs = [
        store_fetched(fetcher.fetch(serve(server, p, body(data))), store) for p in ("/dup/a.jpg", "/dup/b")
    ]
    assert refs[0] == refs[1] and len(store.listing()) == 1 and store.get(refs[0]) == data


def test_a_failed_fetch_stores_nothing(server, fetcher, tmp_path):
    store = ImageStore.from_uri(str(tmp_path / "run"))
    assert store_fetched(fetcher.fetch(serve(server, "/dup/404", status(404))), store) is None
    assert store.listing() == {}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_bytes", 0),
        ("read_timeout_s", 0),
        ("retries", -1),
        ("allow_networks", ("10.0.0.1/8x",)),
        ("per_host_concurrency", 0),
        ("jpeg_quality", 101),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(PipelineConfigError, match=field):
        FetchConfig(**{field: value})


# --- https: dialled at the vetted address, verified against the host name ----------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """An HTTPS image server on 127.0.0.1 whose self-signed certificate names only `images.test`."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "images.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("images.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client_ctx = ssl.create_default_context(cafile=str(folder / "cert.pem"))
    with ImageServer(tls=server_ctx) as srv:
        srv.route("/tls/a.jpg", body(jpeg()))
        yield srv, client_ctx


def tls_fetch(tls_server, host: str):
    srv, client_ctx = tls_server
    cfg = replace(LOCAL, allow_hosts=(), allow_networks=("127.0.0.0/8",), retries=0)
    connects = Connects()
    resolver = {"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
    with Fetcher(cfg, resolver=lambda h, p: resolver[h], connector=connects, ssl_context=client_ctx) as f:
        return f.fetch(srv.url("/tls/a.jpg", host=host)), connects.calls


def test_https_dials_the_vetted_address_and_verifies_the_host_name(tls_server):
    result, calls = tls_fetch(tls_server, "images.test")
    assert result.ok and calls == [("127.0.0.1", tls_server[0].port)]


def test_https_to_a_name_the_certificate_does_not_cover_fails(tls_server):
    result, _ = tls_fetch(tls_server, "other.test")
    assert result.error == "error:fetch_connect" and "certificate" in result.detail.lower()
