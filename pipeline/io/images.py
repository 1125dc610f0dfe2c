"""The one image loader (DESIGN.md §6, STYLE R34/R35): every path that reads or decodes an image goes
through here.

Two kinds of failure, never confused:
- `ImageError(kind)`: the bytes are not a valid image (empty, not an image, a format outside
  ALLOWED_FORMATS, a decompression bomb, cut short, too small...). The caller turns the kind into a
  reject reason, `error:image_<kind>`, committed and final.
- A failing read (`read_with_retries`, used by the image store and by local corpus files): an OSError
  is retried with backoff, then `ImageReadError` propagates and fails the shard, which resume redoes.
  Nothing here turns a storage failure, an OOM or a bug into a data verdict: only ImageError is one.

Only ALLOWED_FORMATS reach a Pillow decoder (Image.open(formats=...)); other formats are recognised by
their plugin's magic-byte check alone (no parsing) or as markup (SVG, HTML) and refused as
`format_not_allowed`, so EPS/PS never reaches Ghostscript. Odd modes are converted in one place
(`_normalised`), never silently kept: CMYK, 16-bit, palette and alpha images become RGB (alpha composited on
white); animated images keep their first frame; EXIF orientation is applied where pixels are used.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image, ImageOps

from pipeline.config import check
from pipeline.logging import get_logger

log = get_logger(__name__)

# The formats any input image may be (corpus, pool, fetched, stored); Pillow is asked for nothing else,
# so none of its other decoders (EPS calls Ghostscript; PSD, ICNS, FITS, SPIDER... parse untrusted
# headers) ever sees an input byte. TIFF is left out on purpose: its dozens of libtiff codecs are the
# largest decoder surface of the common formats, and web/corpus images are these five (a TIFF is
# `error:image_format_not_allowed`; convert it before ingest).
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")
# What a fetched URL may be before decoding (sniff_format): the magic bytes of ALLOWED_FORMATS.
MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)


@dataclass(frozen=True)
class FittedImage:
    data: bytes
    format: str
    width: int
    height: int


class ImageError(Exception):
    """The bytes are not a valid image: `kind` becomes the reject reason `error:image_<kind>`."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class ImageReadError(Exception):
    """The image's bytes could not be read (storage), after retries: a system failure that fails the
    shard for resume, never a reject."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    # Pillow's own bomb limit is ~89M pixels; a training image never needs more than this.
    max_pixels: int = 40_000_000
    min_side: int = 8
    # How a JPEG/PNG kept as it is gets checked: `structure` (the default) reads the header and the
    # file's structure without decoding pixels (JPEG: an end-of-image marker after the last scan; PNG:
    # every chunk's CRC up to IEND); `decode` also runs the decoder over the whole stream, at twice
    # ingest's CPU on image-heavy corpora. Both catch every cut file and every damaged PNG; garbage
    # inside a JPEG scan that libjpeg would stop on passes `structure` (a later stage that decodes the
    # image rejects that row; `fusegen validate` decodes every exported image). README has the
    # measured comparison.
    check: Literal["decode", "structure"] = "structure"

    def __post_init__(self) -> None:
        check(self.max_bytes > 0, "images", "max_bytes", "must be > 0")
        check(self.max_pixels > 0, "images", "max_pixels", "must be > 0")
        choices = ("decode", "structure")
        check(self.check in choices, "images", "check", f"must be one of {choices} (got {self.check!r})")


# Caps for images read back from the run's store: they passed the input checks once (with whatever limits
# the run configured), so only a bomb is refused here, never a size the input checks allowed.
STORED_LIMITS = ImageLimits(max_bytes=1 << 30, max_pixels=Image.MAX_IMAGE_PIXELS, min_side=1)


@dataclass(frozen=True)
class ReadRetry:
    """How a failing image read is retried: `attempts` tries in all, waits doubling from `base_wait_s`
    (with jitter) up to `max_wait_s`."""

    attempts: int = 5
    base_wait_s: float = 0.5
    max_wait_s: float = 10.0


READ_RETRY = ReadRetry()
# Errors a retry cannot fix: raised at once, as they are (the caller decides what they mean: a missing
# corpus file is a reject, a missing stored image a failed shard).
_FINAL = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def read_with_retries(read: Callable[[], bytes], what: str, retry: ReadRetry | None = None) -> bytes:
    """`read()`, retried on OSError (a throttled or flaky S3/GCS/NFS read) with exponential backoff
    (`retry`, else READ_RETRY).

    Raises:
        ImageReadError: every attempt failed with a retryable OSError (chained to the last one).
        FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError: at once, unchanged.
    """
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

    retry = retry or READ_RETRY

    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, OSError) and not isinstance(exc, _FINAL)

    def before_sleep(state: Any) -> None:
        exc = state.outcome.exception()
        log.warning("reading %s: %s: %s (attempt %d), retrying", what, type(exc).__name__, exc,
                    state.attempt_number)

    retrying = Retrying(
        stop=stop_after_attempt(retry.attempts),
        # Jitter, so the workers a throttled bucket refused do not all come back at once.
        wait=wait_exponential(multiplier=retry.base_wait_s, max=retry.max_wait_s)
        + wait_random(0, retry.base_wait_s),
        retry=retry_if_exception(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(read)
    except _FINAL:
        raise
    except OSError as exc:
        raise ImageReadError(
            f"reading {what} failed {retry.attempts} times: {type(exc).__name__}: {exc}"
        ) from exc


def decode_image(
    data: bytes, limits: ImageLimits = STORED_LIMITS, max_side: int | None = None
) -> Image.Image:
    """Encoded bytes -> the RGB image every model sees: an allowed format under the caps, its first frame,
    EXIF orientation applied, converted to RGB (`_normalised`), shrunk to `max_side` when given.

    Raises:
        ImageError: and nothing else for any bytes (kinds of `_open_checked`, and `truncated`); a
            MemoryError (the machine, not the image: the pixel cap bounds what an image may ask for)
            propagates.
    """
    img = _open_checked(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if getattr(img, "is_animated", False):
                img.seek(0)
            if max_side is not None and img.format == "JPEG" and max(img.size) > max_side:
                w, h = img.size
                img.draft("RGB", (max_side * w // max(w, h), max_side * h // max(w, h)))
            img.load()
            rgb = _normalised(img)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for cut or damaged input
        raise ImageError("truncated", f"{type(exc).__name__}: {str(exc)[:100]}") from None
    if max_side is not None:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb


def load_stored(store: Any, ref: dict, max_side: int | None = None) -> Image.Image:
    """A stored image (`ImageStore.get`: retried reads) decoded as `decode_image` does.

    Raises:
        ImageError: the stored bytes are not a valid image (a reject for the row).
        ImageReadError / FileNotFoundError: the store failed or lost the file (the shard fails).
    """
    return decode_image(store.get(ref), STORED_LIMITS, max_side)


def normalise_image(data: bytes, limits: ImageLimits) -> FittedImage:
    """The image bytes ready to store, their format and size: the original bytes when already plain
    upright RGB/L JPEG/PNG, else an RGB PNG (`_normalised`: first frame, EXIF orientation applied)."""
    img = _open_checked(data, limits)
    width, height = img.size
    fmt = (img.format or "").upper()
    # A plain RGB/grey upright JPEG or PNG is kept as is (if it holds one frame), once checked; a rotated
    # one is stored upright, so its reference's width and height are what every reader decodes.
    plain = fmt in ("JPEG", "PNG") and img.mode in ("RGB", "L") and _orientation(img) == 1
    if plain and limits.check == "structure" and not getattr(img, "is_animated", False):
        _check_structure(data, fmt)
        return FittedImage(image_bytes_only(data, fmt), fmt.lower(), width, height)
    if plain and fmt == "JPEG":
        # Kept as is: its pixels are never used here, only checked. libjpeg still entropy-decodes the
        # whole stream (a truncated or corrupt file fails as before) but scales the IDCT by 1/8: 1.45x
        # faster on a 430 KB 800x600 noise JPEG (3.3 vs 4.8 ms), where entropy decoding dominates.
        img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img.load()
        except Exception as exc:  # noqa: BLE001
            raise ImageError("truncated", str(exc)[:120]) from None
    try:
        # n_frames walks every frame and seek/convert decode more data: a file cut after its first
        # frame fails here, not in load(), with IndexError, struct.error, OSError, EOFError...
        animated = getattr(img, "n_frames", 1) > 1
        if plain and not animated:
            # The size from the header: after `draft` the image object holds the 1/8-scale size.
            return FittedImage(image_bytes_only(data, fmt), fmt.lower(), width, height)
        if animated:
            img.seek(0)
        rgb = _normalised(img)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for cut input
        raise ImageError("truncated", f"{type(exc).__name__}: {str(exc)[:100]}") from None
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return FittedImage(buf.getvalue(), "png", rgb.width, rgb.height)


def image_bytes_only(data: bytes, fmt: str) -> bytes:
    """A JPEG or PNG kept as is, without whatever follows its end (the JPEG's end-of-image marker, the
    PNG's IEND chunk): a polyglot's appended ZIP or script is not stored, hashed or published. Bytes
    whose end cannot be found come back unchanged (the decoders above judged them)."""
    end = _png_end(data) if fmt == "PNG" else _jpeg_end(data) if fmt == "JPEG" else None
    return data[:end] if end is not None and end < len(data) else data


def _png_end(data: bytes) -> int | None:
    i = 8  # after the signature: chunks of (length, type, data, CRC)
    while i + 8 <= len(data):
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        i += 12 + length
        if kind == b"IEND":
            return i if i <= len(data) else None
    return None


def _jpeg_end(data: bytes) -> int | None:
    """The offset after the main image's end-of-image marker, walking the segments (an EXIF thumbnail's
    markers sit inside its APP1 segment and are skipped with it) and each scan's entropy-coded data (where
    a 0xFF byte is always followed by 0x00, a restart marker or the next marker)."""
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return i + 2
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
            continue
        if i + 4 > n:
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: skip its entropy-coded data to the next marker
            while True:
                i = data.find(b"\xff", i)
                if i < 0 or i + 1 >= n:
                    return None
                following = data[i + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                    i += 1 if following == 0xFF else 2
                    continue
                break
    return None


def _check_structure(data: bytes, fmt: str) -> None:
    """The `structure` check of a JPEG or PNG (see ImageLimits.check); raises ImageError("truncated").

    JPEG: entropy-coded data escapes every 0xFF byte, so a 0xFFDA (start of scan) or 0xFFD9 (end of
    image) pair is always a real marker; a whole file has an end-of-image after its last scan (an EXIF
    thumbnail's own markers come before the main image's scans). PNG: Pillow's `verify` reads every
    chunk up to IEND and checks its CRC (a cut file fails its read).
    """
    if fmt == "JPEG":
        last_scan = data.rfind(b"\xff\xda")
        if last_scan < 0 or data.rfind(b"\xff\xd9") < last_scan:
            raise ImageError("truncated", "no JPEG scan followed by an end-of-image marker")
        return
    try:
        with Image.open(io.BytesIO(data), formats=("PNG",)) as img:
            img.verify()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged chunks
        raise ImageError("truncated", f"{type(exc).__name__}: {str(exc)[:100]}") from None


def other_format(data: bytes) -> str | None:
    """The name of a format outside ALLOWED_FORMATS that `data` starts like, else None: markup (SVG,
    HTML, XML) by its first non-blank byte, PDF by its header, else the first Pillow plugin whose
    magic-byte check accepts the first 16 bytes (that check only compares bytes; the plugin never runs)."""
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n\x0c")
    if head.startswith(b"<"):
        return "SVG/HTML/XML markup"
    if data.startswith(b"%PDF-"):
        return "PDF"
    Image.init()
    for fmt, (_factory, accept) in Image.OPEN.items():
        if fmt in ALLOWED_FORMATS or accept is None:
            continue
        try:
            if accept(data[:16]):
                return fmt
        except Exception:  # noqa: BLE001, S112 - a plugin's check on a short prefix: not that format
            continue
    return None


def sniff_format(data: bytes) -> str | None:
    """The image format named by the first bytes (JPEG, PNG, GIF, WEBP, BMP), else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in MAGIC if data.startswith(magic)), None)


def fit_image(
    data: bytes, limits: ImageLimits, max_side: int, max_aspect: float, jpeg_quality: int = 90
) -> FittedImage:
    """Decode under the pixel cap, apply EXIF orientation, take the first frame, convert to RGB and
    shrink so the longer side is at most `max_side`. A JPEG/PNG that is already plain RGB/grey, upright
    and small enough keeps its bytes; anything else is re-encoded (JPEG from JPEG/WEBP, else PNG).

    Raises:
        ImageError: kinds `empty`, `too_large`, `not_an_image`, `format_not_allowed`,
            `decompression_bomb`, `too_small`, `aspect_ratio`, `truncated`.
    """
    img = _open_checked(data, limits)
    w, h = img.size
    if max(w, h) > max_aspect * min(w, h):
        raise ImageError("aspect_ratio", f"{w}x{h} is more than {max_aspect:g}:1")
    fmt = (img.format or "").upper()
    try:
        animated = bool(getattr(img, "is_animated", False))
        upright = _orientation(img) == 1
        if fmt == "JPEG" and max(w, h) > max_side:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below max_side): most of the speed-up.
            img.draft("RGB", (max_side * w // max(w, h), max_side * h // max(w, h)))
        img.load()
        if (
            fmt in ("JPEG", "PNG")
            and img.mode in ("RGB", "L")
            and not animated
            and upright
            and max(w, h) <= max_side
        ):
            return FittedImage(data, fmt.lower(), w, h)
        if animated:
            img.seek(0)
        rgb = _normalised(img)
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        if fmt in ("JPEG", "WEBP"):
            rgb.save(buf, format="JPEG", quality=jpeg_quality)
            out = "jpeg"
        else:
            rgb.save(buf, format="PNG")
            out = "png"
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for cut input
        raise ImageError("truncated", f"{type(exc).__name__}: {str(exc)[:100]}") from None
    return FittedImage(buf.getvalue(), out, rgb.width, rgb.height)


def _open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open (header only, ALLOWED_FORMATS only) and apply the byte, pixel-count and minimum-side limits."""
    if not data:
        raise ImageError("empty")
    if len(data) > limits.max_bytes:
        raise ImageError("too_large", f"{len(data)} bytes > {limits.max_bytes}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError("decompression_bomb", str(exc)) from None
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for junk input
            other = other_format(data)
            if other is not None:
                allowed = ", ".join(ALLOWED_FORMATS)
                raise ImageError("format_not_allowed", f"{other} (allowed: {allowed})") from None
            raise ImageError("not_an_image", type(exc).__name__) from None
    w, h = img.size
    if w * h > limits.max_pixels:
        raise ImageError("decompression_bomb", f"{w}x{h} pixels > {limits.max_pixels}")
    if min(w, h) < limits.min_side:
        raise ImageError("too_small", f"{w}x{h}")
    return img


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 = upright); a damaged EXIF block counts as upright, not as a bad image."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many types on damaged blocks
        return 1


def _normalised(img: Image.Image) -> Image.Image:
    """The one normalisation of decoded pixels (the current frame): EXIF orientation applied, then RGB."""
    if _orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: scale to 8 bits instead of clipping.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return Image.fromarray((arr * (255.0 / top)).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")
