"""Unit-test helpers: in-memory image encoders (image and ingest tests), a release event (hang tests), a
hand-written finished run dir (the local Hub server is in tests/conftest.py)."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from tests.support.run_dir import make_run_dir


def encode(img: Image.Image, fmt: str, **save_kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


@pytest.fixture
def encode_image():
    """`encode_image(pil_image, "PNG", **save_kwargs)` -> bytes."""
    return encode


@pytest.fixture
def image_bytes():
    """`image_bytes(fmt, mode="RGB", size=(16, 12), color=...)` -> encoded bytes of a solid image."""

    def make(fmt: str = "PNG", mode: str = "RGB", size: tuple[int, int] = (16, 12), color=None) -> bytes:
        if color is None:
            color = {"RGB": (200, 30, 40), "L": 90, "RGBA": (200, 30, 40, 255), "CMYK": (0, 200, 200, 0)}.get(
                mode, 0
            )
        return encode(Image.new(mode, size, color), fmt)

    return make


@pytest.fixture(scope="session")
def noise_png() -> bytes:
    """A 64x64 RGB PNG of seeded noise (does not compress, so truncating it cuts pixel data)."""
    pixels = np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


@pytest.fixture(scope="session")
def animated_gif() -> bytes:
    """A 3-frame 12x9 GIF: red, green, blue."""
    frames = [Image.new("RGB", (12, 9), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


@pytest.fixture
def release():
    """An event set at teardown: fakes that hang on it (watchdog, stall guard) then return, so no
    abandoned thread outlives its test."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def run_dir(tmp_path):
    return make_run_dir(tmp_path)
