"""A JPEG or PNG kept as is loses whatever follows its end: a polyglot (image + ZIP / script) stores,
hashes and publishes only the image. Pinned to the encoder: Pillow's own files come back byte for byte."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.io.images import ImageLimits, image_bytes_only, normalise_image


def encoded(fmt: str, w: int, h: int, seed: int, **save) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **save)
    return buf.getvalue()


def with_exif_thumbnail(w: int, h: int, seed: int) -> bytes:
    """A JPEG whose EXIF block holds a JPEG thumbnail (its own start, scans and end-of-image markers)."""
    thumb = encoded("JPEG", 16, 16, seed + 1)
    exif = Image.Exif()
    exif[0x0112] = 1
    img = Image.open(io.BytesIO(encoded("JPEG", w, h, seed)))
    raw = exif.tobytes()
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=raw + thumb)  # the thumbnail rides inside APP1
    return buf.getvalue()


JUNK = st.binary(min_size=1, max_size=300).map(lambda b: b"PK\x03\x04" + b)


@settings(max_examples=40, deadline=None)
@given(fmt=st.sampled_from(["PNG", "JPEG", "JPEG-progressive", "JPEG-exif-thumb"]), w=st.integers(1, 70),
       h=st.integers(1, 70), seed=st.integers(0, 1000), junk=JUNK)
def test_the_encoders_bytes_come_back_whole_and_anything_after_them_is_cut(fmt, w, h, seed, junk):
    if fmt == "JPEG-progressive":
        data, kind = encoded("JPEG", w, h, seed, progressive=True, quality=90), "JPEG"
    elif fmt == "JPEG-exif-thumb":
        data, kind = with_exif_thumbnail(w, h, seed), "JPEG"
    else:
        data, kind = encoded(fmt, w, h, seed), fmt
    assert image_bytes_only(data, kind) == data
    assert image_bytes_only(data + junk, kind) == data


def test_a_polyglot_is_stored_without_its_payload_and_hashes_as_the_plain_image():
    for fmt in ("PNG", "JPEG"):
        data = encoded(fmt, 24, 12, 5)
        for check in ("decode", "structure"):
            limits = ImageLimits(check=check)
            assert normalise_image(data + b"PK\x03\x04zip payload", limits).data == data
            assert normalise_image(data, limits).data == data


def test_bytes_whose_end_cannot_be_found_come_back_unchanged():
    assert image_bytes_only(b"\xff\xd8\xff\xe0\x00", "JPEG") == b"\xff\xd8\xff\xe0\x00"
    png = encoded("PNG", 3, 3, 0)
    cut = png[: png.rfind(b"IEND") - 4]
    assert image_bytes_only(cut, "PNG") == cut
