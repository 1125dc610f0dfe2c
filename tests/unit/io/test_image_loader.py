"""pipeline/io/images.py as the one image loader: the format allow-list, bombs, cut and empty files, odd modes
normalised the same way by every entry point, and storage reads retried then failed (never a verdict).

Every file here is real bytes Pillow (or, for markup, a hand-written document) produced; the property tests
feed generated and mutated bytes and allow only the two declared outcomes: an RGB image or ImageError.
"""

from __future__ import annotations

import errno
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import EpsImagePlugin, Image

from pipeline.io.images import (
    ALLOWED_FORMATS,
    STORED_LIMITS,
    ImageError,
    ImageLimits,
    ImageReadError,
    ReadRetry,
    decode_image,
    fit_image,
    normalise_image,
    read_with_retries,
)
from tests.unit.io.test_images import png_with_header_size

FAST = ReadRetry(attempts=4, base_wait_s=0.0, max_wait_s=0.0)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def noise(size=(40, 30), seed=0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def kind(data: bytes, limits: ImageLimits = STORED_LIMITS) -> str:
    with pytest.raises(ImageError) as err:
        decode_image(data, limits)
    return err.value.kind


# --- the allow-list -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ALLOWED_FORMATS)
def test_every_allowed_format_decodes_to_rgb_of_its_size(fmt):
    img = decode_image(encode(noise((40, 30)), fmt))
    assert (img.mode, img.size) == ("RGB", (40, 30))


@pytest.mark.parametrize("fmt", ["TIFF", "EPS", "ICO", "PPM", "SGI", "JPEG2000", "QOI", "DDS", "PDF"])
def test_a_real_file_of_another_pillow_format_is_not_allowed(fmt):
    assert kind(encode(Image.new("RGB", (16, 16), (9, 9, 9)), fmt)) == "format_not_allowed"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("fmt", ["IM", "SPIDER"])
def test_a_format_with_no_magic_bytes_is_not_an_image(fmt):
    # Pillow has no byte check for these (only their parser knows them), so they are not named; they are
    # refused all the same.
    assert kind(encode(Image.new("RGB", (16, 16), (9, 9, 9)), fmt)) == "not_an_image"


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>',
        b'\xef\xbb\xbf  <svg xmlns="http://www.w3.org/2000/svg"><rect width="8" height="8"/></svg>',
        b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        b"\n\n<html><head><title>Access denied</title></head></html>",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    ],
    ids=["svg", "svg-bom", "html", "html-blank-lines", "pdf"],
)
def test_markup_and_pdf_are_not_allowed(data):
    assert kind(data) == "format_not_allowed"


def test_eps_never_reaches_the_eps_plugin(monkeypatch):
    # Hand-written EPS, as an attacker would send it (Pillow would hand it to Ghostscript on load).
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n0 setgray showpage\n%%EOF\n"
    opened = []
    real_open = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1) or real_open(self))
    for entry in (decode_image, lambda d: normalise_image(d, ImageLimits()),
                  lambda d: fit_image(d, ImageLimits(), 64, 20.0)):
        with pytest.raises(ImageError) as err:
            entry(eps)
        assert err.value.kind == "format_not_allowed"
    assert opened == []


def test_bytes_of_no_known_format_are_not_an_image():
    assert kind(b"just some words, no image here at all") == "not_an_image"


# --- sizes, bombs, cut and empty files --------------------------------------------------------------


def test_zero_bytes_are_empty():
    assert kind(b"") == "empty"


@pytest.mark.parametrize(
    ("width", "height"),
    [(20000, 20000), (12000, 8000)],
    ids=["over-twice-pillow-limit", "over-pillow-limit"],
)
def test_a_header_claiming_too_many_pixels_is_a_decompression_bomb(width, height):
    assert kind(png_with_header_size(width, height)) == "decompression_bomb"


def test_the_configured_pixel_cap_applies_below_pillows():
    assert kind(encode(noise((40, 30)), "PNG"), ImageLimits(max_pixels=1000)) == "decompression_bomb"


@pytest.mark.parametrize("fmt", ALLOWED_FORMATS)
def test_a_file_cut_in_its_pixel_data_is_truncated(fmt):
    data = encode(noise((64, 64)), fmt)
    # libwebp checks the RIFF length when the file is opened: a cut WebP is not identified at all.
    assert kind(data[: len(data) * 3 // 4]) == ("not_an_image" if fmt == "WEBP" else "truncated")


# --- odd modes: one normalisation, whichever entry point -------------------------------------------


def exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG, left half black, right half white, with EXIF orientation 6 (display rotated 90°
    clockwise: 20x40, black on top)."""
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def palette_with_transparency() -> bytes:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (8, 0, 16, 16))
    return encode(img, "PNG", transparency=0)


def sixteen_bit_grey() -> bytes:
    return encode(Image.fromarray(np.full((12, 16), 32768, np.uint16)), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (12, 9), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (16, 12), (0, 255, 255, 0)), "JPEG", quality=95)


def test_exif_orientation_is_applied():
    img = decode_image(exif_rotated_jpeg())
    assert img.size == (20, 40)
    assert img.getpixel((10, 5))[0] < 40 and img.getpixel((10, 35))[0] > 215


def test_transparent_palette_pixels_become_white():
    img = decode_image(palette_with_transparency())
    assert (img.getpixel((2, 2)), img.getpixel((12, 2))) == ((255, 255, 255), (0, 0, 255))


def test_sixteen_bit_grey_is_scaled_not_clipped():
    # 32768 of 65535 is half scale: 127 (clipping would give 255).
    assert decode_image(sixteen_bit_grey()).getpixel((0, 0)) == (127, 127, 127)


def test_an_animated_gif_gives_its_first_frame():
    assert decode_image(animated_gif()).getpixel((0, 0)) == (255, 0, 0)


def test_cmyk_becomes_rgb_of_about_the_same_colour():
    r, g, b = decode_image(cmyk_jpeg()).getpixel((8, 6))
    assert r > 200 and g < 60 and b < 60


ODD = {"exif-rotated": exif_rotated_jpeg, "palette-transparency": palette_with_transparency,
       "16-bit": sixteen_bit_grey, "animated": animated_gif, "cmyk": cmyk_jpeg}


@pytest.mark.parametrize("make", ODD.values(), ids=ODD.keys())
def test_stored_bytes_decode_to_the_pixels_of_the_input_and_the_size_their_reference_records(make):
    data = make()
    direct = decode_image(data)
    stored = normalise_image(data, ImageLimits())
    again = decode_image(stored.data)
    assert (stored.width, stored.height) == direct.size == again.size
    assert np.abs(np.asarray(again, np.int16) - np.asarray(direct, np.int16)).max() == 0


@pytest.mark.parametrize("make", ODD.values(), ids=ODD.keys())
def test_fetched_and_fitted_bytes_decode_to_the_same_picture(make):
    data = make()
    fitted = fit_image(data, ImageLimits(min_side=1), 4096, 20.0)
    direct, again = decode_image(data), decode_image(fitted.data)
    assert (fitted.width, fitted.height) == direct.size == again.size
    # JPEG in, JPEG out (re-encoded): close, not equal.
    assert np.abs(np.asarray(again, np.int16) - np.asarray(direct, np.int16)).mean() < 8


def test_max_side_shrinks_keeping_the_aspect():
    assert decode_image(encode(noise((400, 100)), "JPEG"), max_side=64).size == (64, 16)


# --- only the two declared outcomes, for any bytes --------------------------------------------------

SEEDS = {fmt: encode(noise((24, 18), seed=3), fmt) for fmt in ALLOWED_FORMATS} | {
    "GIF-animated": animated_gif(),
    "JPEG-exif": exif_rotated_jpeg(),
    "PNG-16": sixteen_bit_grey(),
}
ENTRIES = {
    "decode": lambda d: decode_image(d, ImageLimits(max_pixels=1 << 20, min_side=1)),
    "decode-fit": lambda d: decode_image(d, ImageLimits(max_pixels=1 << 20, min_side=1), max_side=16),
    "normalise": lambda d: normalise_image(d, ImageLimits(max_pixels=1 << 20)),
    "normalise-decode": lambda d: normalise_image(d, ImageLimits(max_pixels=1 << 20, check="decode")),
    "fit": lambda d: fit_image(d, ImageLimits(max_pixels=1 << 20), 16, 20.0),
}


def outcome(entry, data: bytes) -> None:
    try:
        entry(data)
    except ImageError:
        pass


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x01\x00\x00WEBPVP8 ", b"BM", b"II*\x00", b"%!PS"]


@pytest.mark.parametrize("entry", ENTRIES.values(), ids=ENTRIES.keys())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=2048), st.builds(lambda m, b: m + b, st.sampled_from(MAGICS),
                                                          st.binary(max_size=512)), mutated()))
def test_any_bytes_give_an_image_or_image_error_and_nothing_else(entry, data):
    outcome(entry, data)


# --- storage reads ----------------------------------------------------------------------------------


class Reads:
    """A read that raises the given exceptions in turn, then returns b"ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> bytes:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return b"ok"


def test_a_read_that_fails_then_recovers_is_retried():
    read = Reads(OSError(errno.EIO, "throttled"), TimeoutError("slow"))
    assert (read_with_retries(read, "x", FAST), read.calls) == (b"ok", 3)


def test_a_read_that_keeps_failing_raises_image_read_error_after_every_attempt():
    read = Reads(*[OSError(errno.EIO, "throttled")] * 10)
    with pytest.raises(ImageReadError, match="failed 4 times") as err:
        read_with_retries(read, "x", FAST)
    assert read.calls == FAST.attempts and isinstance(err.value.__cause__, OSError)
    assert not isinstance(err.value, (ImageError, OSError))


@pytest.mark.parametrize("exc", [FileNotFoundError("gone"), PermissionError("denied"), ValueError("bug")])
def test_errors_a_retry_cannot_fix_are_raised_at_once_unchanged(exc):
    read = Reads(exc)
    with pytest.raises(type(exc)):
        read_with_retries(read, "x", FAST)
    assert read.calls == 1
