"""pipeline/io/images.py: normalise_image passes plain images through and converts or rejects the rest."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.errors import PipelineConfigError
from pipeline.io.images import FittedImage, ImageError, ImageLimits, fit_image, normalise_image, sniff_format

LIMITS = ImageLimits()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def png_with_header_size(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR claims width x height (CRC fixed), so only the header is 'big'."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    # Signature (8) + chunk length (4); the IHDR chunk type and data run from byte 12 to 29, CRC follows.
    assert data[12:16] == b"IHDR"
    chunk = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = chunk
    data[29:33] = struct.pack(">I", zlib.crc32(chunk))
    return bytes(data)


def kind_of(data: bytes, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(ImageError) as err:
        normalise_image(data, limits)
    return err.value.kind


# --- plain images pass through untouched --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mode", "expected_fmt"), [("PNG", "RGB", "png"), ("JPEG", "RGB", "jpeg"), ("PNG", "L", "png")]
)
def test_plain_rgb_or_grey_png_and_jpeg_pass_through_byte_identical(image_bytes, fmt, mode, expected_fmt):
    data = image_bytes(fmt, mode)
    assert normalise_image(data, LIMITS) == FittedImage(data, expected_fmt, *Image.open(io.BytesIO(data)).size)


# --- odd modes become an RGB PNG -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("JPEG", "CMYK"), ("PNG", "P"), ("PNG", "RGBA"), ("PNG", "LA"), ("GIF", "P"), ("WEBP", "RGB")],
)
def test_odd_mode_or_format_is_converted_to_rgb_png(image_bytes, fmt, mode):
    fitted = normalise_image(image_bytes(fmt, mode, size=(20, 10)), LIMITS)
    out, out_fmt = fitted.data, fitted.format
    img = decode(out)
    assert (out_fmt, img.format, img.mode, img.size) == ("png", "PNG", "RGB", (20, 10))


def test_sixteen_bit_grey_png_is_converted_to_rgb_png(encode_image):
    data = encode_image(Image.fromarray(np.full((10, 20), 1000, dtype=np.uint16)), "PNG")
    assert decode(data).mode == "I;16"
    img = decode(normalise_image(data, LIMITS).data)
    assert (img.format, img.mode, img.size) == ("PNG", "RGB", (20, 10))


def test_sixteen_bit_grey_is_scaled_to_eight_bits_not_clipped(encode_image):
    # 32896 = 128 * 257, the 16-bit value of 8-bit 128.
    pixels = np.array([[0, 32896, 65535] * 4] * 8, dtype=np.uint16)
    img = decode(normalise_image(encode_image(Image.fromarray(pixels), "PNG"), LIMITS).data)
    assert [img.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_transparent_pixels_are_composited_on_white(image_bytes):
    img = decode(normalise_image(image_bytes("PNG", "RGBA", color=(255, 0, 0, 0)), LIMITS).data)
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_colour_is_preserved_approximately(image_bytes):
    # CMYK (0, 255, 255, 0) is red.
    r, g, b = decode(
        normalise_image(image_bytes("JPEG", "CMYK", color=(0, 255, 255, 0)), LIMITS).data
    ).getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60


def test_animated_gif_becomes_a_still_png_of_frame_zero(animated_gif):
    img = decode(normalise_image(animated_gif, LIMITS).data)
    assert (img.format, getattr(img, "n_frames", 1), img.mode, img.size, img.getpixel((0, 0))) == (
        "PNG",
        1,
        "RGB",
        (12, 9),
        (255, 0, 0),
    )


# --- bad images raise ImageError with a kind ----------------------------------------------------------------


def test_zero_bytes_is_empty():
    assert kind_of(b"") == "empty"


def test_text_bytes_are_not_an_image():
    assert kind_of(b"hello, I am a text file\n") == "not_an_image"


def test_truncated_png_is_truncated(noise_png):
    assert kind_of(noise_png[: len(noise_png) // 2]) == "truncated"


def test_header_claiming_huge_dimensions_is_a_decompression_bomb():
    # 100000 x 100000 is past Pillow's own limit: Image.open itself refuses it.
    assert kind_of(png_with_header_size(100_000, 100_000)) == "decompression_bomb"


def test_header_over_max_pixels_is_a_decompression_bomb():
    # 7000 x 7000 = 49M pixels: under Pillow's limit, over ImageLimits.max_pixels (40M).
    assert kind_of(png_with_header_size(7000, 7000)) == "decompression_bomb"


def test_more_bytes_than_max_bytes_is_too_large(noise_png):
    assert kind_of(noise_png, ImageLimits(max_bytes=len(noise_png) - 1)) == "too_large"


def test_exactly_max_bytes_is_accepted(noise_png):
    assert normalise_image(noise_png, ImageLimits(max_bytes=len(noise_png))).format == "png"


def test_side_below_min_side_is_too_small(image_bytes):
    assert kind_of(image_bytes("PNG", "RGB", size=(7, 100))) == "too_small"


def test_truncated_animated_gif_raises_only_image_error(animated_gif):
    escaped = set()
    for cut in range(len(animated_gif) // 2, len(animated_gif)):
        try:
            normalise_image(animated_gif[:cut], LIMITS)
        except ImageError:
            pass
        except Exception as exc:  # noqa: BLE001 - collecting what escapes is the point
            escaped.add(type(exc).__name__)
    assert escaped == set()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_still_image_at_any_length_raises_only_image_error(encode_image, fmt):
    data = encode_image(
        Image.fromarray(np.random.RandomState(1).randint(0, 255, (24, 24, 3), dtype=np.uint8)), fmt
    )
    escaped = set()
    for cut in range(1, len(data), 7):
        try:
            normalise_image(data[:cut], LIMITS)
        except ImageError:
            pass
        except Exception as exc:  # noqa: BLE001
            escaped.add(type(exc).__name__)
    assert escaped == set()


# --- fit_image: what the URL fetcher stores ------------------------------------------------------------------


def noise(size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.random.RandomState(2).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def fit(data: bytes, max_side: int = 64, max_aspect: float = 20.0):
    return fit_image(data, LIMITS, max_side, max_aspect)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_fit_keeps_the_bytes_of_a_small_plain_upright_image(encode_image, fmt):
    data = encode_image(noise((40, 30)), fmt)
    assert fit(data) == FittedImage(data, fmt.lower(), 40, 30)


@pytest.mark.parametrize(("fmt", "out"), [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "jpeg"), ("BMP", "png")])
def test_fit_shrinks_to_max_side_keeping_aspect(encode_image, fmt, out):
    fitted = fit(encode_image(noise((1000, 500)), fmt), max_side=100)
    img = decode(fitted.data)
    assert (fitted.format, fitted.width, fitted.height, img.size, img.mode) == (
        out,
        100,
        50,
        (100, 50),
        "RGB",
    )


def test_fit_applies_exif_orientation(encode_image):
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    fitted = fit(encode_image(noise((40, 20)), "JPEG", exif=exif.tobytes()))
    assert (fitted.width, fitted.height) == (20, 40)
    assert 0x0112 not in decode(fitted.data).getexif()


def test_fit_refuses_an_extreme_aspect_ratio(encode_image):
    with pytest.raises(ImageError) as err:
        fit(encode_image(noise((1000, 20)), "PNG"), max_aspect=20.0)
    assert err.value.kind == "aspect_ratio"


def test_fit_decodes_only_the_allowed_formats(encode_image):
    with pytest.raises(ImageError) as err:
        fit(encode_image(noise((40, 30)), "TIFF"))
    assert err.value.kind == "format_not_allowed"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_fit_on_a_truncated_image_at_any_length_raises_only_image_error(encode_image, fmt):
    data = encode_image(noise((48, 40)), fmt)
    escaped = set()
    for cut in range(0, len(data), 11):
        try:
            fit(data[:cut])
        except ImageError:
            pass
        except Exception as exc:  # noqa: BLE001 - collecting what escapes is the point
            escaped.add(type(exc).__name__)
    assert escaped == set()


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"GIF89a", "GIF"),
        (b"GIF87a", "GIF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"BM", "BMP"),
        (b"<html>", None),
        (b"", None),
        (b"RIFF\x00\x00\x00\x00WAVE", None),
        (b"%!PS-Adobe", None),
    ],
)
def test_sniff_format_reads_magic_bytes(head, fmt):
    assert sniff_format(head) == fmt


def test_kept_jpeg_reports_its_full_size_not_the_draft_scale(encode_image):
    # The check decodes at 1/8 scale; the reference stored for the image must still say 800x600.
    data = encode_image(Image.new("RGB", (800, 600), (10, 200, 30)), "JPEG")
    fitted = normalise_image(data, LIMITS)
    assert (fitted.data, fitted.width, fitted.height) == (data, 800, 600)


# --- check: structure (header and file structure, no pixel decoding) ---------------------------------------

STRUCTURE = ImageLimits(check="structure")


def noise_image(seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Image.Image:
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, shape, dtype=np.uint8), mode)


@given(seed=st.integers(0, 2**16), fmt=st.sampled_from(["JPEG", "PNG"]), mode=st.sampled_from(["RGB", "L"]),
       progressive=st.booleans())
@settings(max_examples=40, deadline=None)
def test_structure_check_keeps_what_decoding_keeps(seed, fmt, mode, progressive):
    img = noise_image(seed, (8 + seed % 90, 8 + seed % 57), mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"progressive": progressive} if fmt == "JPEG" else {}))
    data = buf.getvalue()
    assert normalise_image(data, STRUCTURE) == normalise_image(data, LIMITS)


@pytest.mark.parametrize(("fmt", "options"), [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {})])
def test_structure_check_rejects_a_file_cut_anywhere(fmt, options):
    buf = io.BytesIO()
    noise_image(3).save(buf, format=fmt, **options)
    data = buf.getvalue()
    # A PNG that lost only the 4-byte CRC of its closing IEND chunk still holds every pixel.
    keep = len(data) - (4 if fmt == "PNG" else 0)
    accepted = [cut for cut in range(1, keep) if _accepts(data[:cut], STRUCTURE)]
    assert accepted == []


def test_structure_check_is_not_fooled_by_a_thumbnail_end_marker():
    # An APP1 segment holding a whole small JPEG (as an EXIF thumbnail does) puts a scan and an
    # end-of-image marker before the main image's scan; cutting the main scan must still be caught.
    thumb = io.BytesIO()
    noise_image(4, (16, 16)).save(thumb, format="JPEG")
    main = io.BytesIO()
    noise_image(5, (64, 64)).save(main, format="JPEG")
    payload = b"Exif\x00\x00" + thumb.getvalue()
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    whole = main.getvalue()[:2] + app1 + main.getvalue()[2:]
    assert normalise_image(whole, STRUCTURE).data == whole
    cut = whole[: len(whole) - 200]
    assert cut.rfind(b"\xff\xd9") > 0  # the thumbnail's end marker is still there
    assert kind_of(cut, STRUCTURE) == "truncated"


def test_structure_check_catches_a_png_chunk_whose_crc_fails():
    buf = io.BytesIO()
    noise_image(6).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[len(data) // 2] ^= 0x10
    assert kind_of(bytes(data), STRUCTURE) == "truncated"


def test_structure_check_still_converts_what_is_not_plain_jpeg_or_png(image_bytes):
    fitted = normalise_image(image_bytes("PNG", "RGBA", size=(20, 10)), STRUCTURE)
    assert (fitted.format, decode(fitted.data).mode) == ("png", "RGB")


def test_unknown_check_is_a_config_error():
    with pytest.raises(PipelineConfigError, match="check"):
        ImageLimits(check="pixels")


def _accepts(data: bytes, limits: ImageLimits) -> bool:
    try:
        normalise_image(data, limits)
    except ImageError:
        return False
    return True
