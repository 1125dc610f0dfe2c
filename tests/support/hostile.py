"""Hostile inputs for ingest and the track behind it (tests/e2e/test_hostile_inputs.py).

`write_mixed_corpus(folder, good)` writes a corpus folder: `good` sample passages (with their images),
one JSONL row per ROW_KINDS entry and a Parquet file of well-typed rows with hostile values. Each hostile
row's doc_id is `bad-<kind>` (it must be rejected with an `error:` reason) or `odd-<kind>` (a valid but
awkward input, e.g. a CMYK JPEG or an EXIF-rotated photo: it must be kept). `write_file_kind(folder, kind)`
writes one FILE_KINDS Parquet file, whose problem is the whole file's (a corrupt footer, a wrong column
type): the run must stop with a clear error before any stage output, or ingest every row.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REJECT, KEEP = "reject", "keep"
JSONL, PARQUET = "a-mixed.jsonl", "b-rows.parquet"
PAYLOAD = b"PK\x03\x04hostile-zip-payload"


def _text(kind: str) -> str:
    return f"The {kind.replace('_', ' ')} landmark is a sample passage written for the hostile input test."


def _png(size=(32, 24), mode="RGB", color=(200, 30, 30), **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG", **save)
    return buf.getvalue()


def _jpeg(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **save)
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose data is a few bytes (huge-dimension claim)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b"")


def _bomb() -> bytes:
    """A 1-bit 12000 x 12000 PNG (144 M pixels) that compresses to a few KB."""
    buf = io.BytesIO()
    Image.new("1", (12000, 12000), 0).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _cmyk() -> bytes:
    return _jpeg(Image.new("CMYK", (40, 30), (0, 200, 200, 0)))


def _sixteen_bit() -> bytes:
    buf = io.BytesIO()
    Image.new("I;16", (40, 30), 40000).save(buf, "PNG")
    return buf.getvalue()


def _palette_alpha() -> bytes:
    img = Image.new("P", (40, 30), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    return buf.getvalue()


def _animated() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    img = Image.new("RGB", (48, 24), (10, 120, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return _jpeg(img, exif=exif.tobytes())


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 30\nnewpath 0 0 moveto 40 30 lineto stroke\nshowpage\n%%EOF\n"
SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="40" height="30">'
       b'<script>alert(1)</script><rect width="40" height="30" fill="red"/></svg>')
HTML = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>Not Found</body></html>"

# kind -> (expected, image file bytes): the row's `image` is a file holding these bytes.
IMAGE_FILES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "image_truncated_png": (REJECT, lambda: _png((64, 64))[:150]),
    "image_truncated_jpeg": (REJECT, lambda: _jpeg(Image.effect_noise((64, 64), 50).convert("RGB"))[:300]),
    "image_zero_bytes": (REJECT, lambda: b""),
    "image_decompression_bomb": (REJECT, _bomb),
    "image_huge_dimensions": (REJECT, lambda: _png_header_only(200_000, 200_000)),
    "image_eps": (REJECT, lambda: EPS),
    "image_svg": (REJECT, lambda: SVG),
    "image_html_as_jpg": (REJECT, lambda: HTML),
    "image_text_file": (REJECT, lambda: b"just some text, not an image\n" * 4),
    "image_one_pixel": (REJECT, lambda: _png((1, 1))),
    "image_corrupt_png_crc": (REJECT, lambda: _png((32, 24))[:40] + b"\xff\xff" + _png((32, 24))[42:]),
    "image_cmyk_jpeg": (KEEP, _cmyk),
    "image_16bit_png": (KEEP, _sixteen_bit),
    "image_palette_transparency": (KEEP, _palette_alpha),
    "image_animated_gif": (KEEP, _animated),
    "image_exif_rotated": (KEEP, _exif_rotated),
    # A valid PNG with a ZIP after IEND (a polyglot): kept only if what is stored is not the polyglot.
    "image_polyglot_png_zip": (KEEP, lambda: _png((32, 24)) + PAYLOAD),
}
# kind -> (expected, the `image` field's value, when it is not a file of IMAGE_FILES).
IMAGE_PATHS: dict[str, tuple[str, object]] = {
    "image_missing_file": (REJECT, "images/no-such-file.png"),
    "image_directory": (REJECT, "images"),
    "image_dev_zero": (REJECT, "/dev/zero"),
    "image_path_traversal": (REJECT, "../../../../../../etc/shadow-no-such"),
    "image_wrong_type_number": (REJECT, 12345),
    "image_wrong_type_list": (REJECT, ["a.png"]),
}


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


# kind -> (expected, the JSONL line's bytes, or a record to dump).
LINES: dict[str, tuple[str, Callable[[str], bytes]]] = {
    "text_latin1_bytes": (REJECT, lambda k: f'{{"doc_id": "bad-{k}", "text": "caf'.encode() + b"\xe9" + b' au lait is a drink with coffee and milk."}'),
    "text_utf16_line": (REJECT, lambda k: json.dumps({"doc_id": f"bad-{k}", "text": _text(k)}).encode("utf-16")),
    "text_lone_surrogate": (REJECT, lambda k: f'{{"doc_id": "bad-{k}", "text": "broken \\ud800 surrogate in a passage that is long enough"}}'.encode()),
    "text_nul_byte": (REJECT, lambda k: json.dumps({"doc_id": f"bad-{k}", "text": "a passage with a\u0000NUL byte in the middle of it"}).encode()),
    "text_control_characters_only": (REJECT, lambda k: json.dumps({"doc_id": f"bad-{k}", "text": "\u0001\u0002\u0007\u001b\u007f" * 10}).encode()),
    "text_giant_field": (REJECT, lambda k: json.dumps({"doc_id": f"bad-{k}", "text": "word " * 400_000}).encode()),
    "text_number": (REJECT, lambda k: json.dumps({"doc_id": f"bad-{k}", "text": 3.14159}).encode()),
    "text_list": (REJECT, lambda k: json.dumps({"doc_id": f"bad-{k}", "text": ["a", "list", "of", "words"]}).encode()),
    "text_object": (REJECT, lambda k: json.dumps({"doc_id": f"bad-{k}", "text": {"nested": {"deeper": "x"}}}).encode()),
    "text_deep_nesting": (REJECT, lambda k: f'{{"doc_id": "bad-{k}", "text": {_deep(100_000)}}}'.encode()),
    "text_nan_literal": (REJECT, lambda k: f'{{"doc_id": "bad-{k}", "text": NaN}}'.encode()),
    "text_missing": (REJECT, lambda k: json.dumps({"doc_id": f"bad-{k}", "title": "no text here"}).encode()),
    "text_empty": (REJECT, lambda k: json.dumps({"doc_id": f"bad-{k}", "text": "   \t  "}).encode()),
    "json_truncated": (REJECT, lambda k: f'{{"doc_id": "bad-{k}", "text": "cut off in the mid'.encode()),
    "json_array_line": (REJECT, lambda k: json.dumps([f"bad-{k}", _text(k)]).encode()),
    "json_bare_string": (REJECT, lambda k: json.dumps(f"bad-{k} {_text(k)}").encode()),
    "doc_id_object": (REJECT, lambda k: json.dumps({"doc_id": {"id": f"bad-{k}"}, "text": _text(k), "title": f"bad-{k}"}).encode()),
    "title_number": (REJECT, lambda k: json.dumps({"doc_id": f"bad-{k}", "text": _text(k), "title": 7}).encode()),
    "image_url_javascript": (REJECT, lambda k: json.dumps({"doc_id": f"bad-{k}", "text": _text(k), "image_url": "javascript:alert(1)"}).encode()),
    "doc_id_duplicate_of_good": (REJECT, None),  # filled in by write_mixed_corpus: a good row's doc_id again
}
# Parquet rows with the right column types and hostile values (kind -> expected, row).
PARQUET_ROWS: dict[str, tuple[str, dict]] = {
    "parquet_image_bytes_garbage": (REJECT, {"text": _text("garbage bytes"), "image": {"bytes": b"\x00garbage" * 8, "path": None}}),
    "parquet_text_null": (REJECT, {"text": None, "image": None}),
    "parquet_image_html_bytes": (REJECT, {"text": _text("html bytes"), "image": {"bytes": HTML, "path": None}}),
    "parquet_image_cmyk_bytes": (KEEP, {"text": _text("cmyk bytes"), "image": {"bytes": _cmyk(), "path": None}}),
}


def row_kinds() -> dict[str, str]:
    """Every row kind -> its expected outcome (REJECT or KEEP)."""
    kinds = {k: v[0] for k, v in LINES.items()}
    kinds |= {k: v[0] for k, v in IMAGE_FILES.items()} | {k: v[0] for k, v in IMAGE_PATHS.items()}
    return kinds | {k: v[0] for k, v in PARQUET_ROWS.items()}


def doc_id(kind: str, expected: str) -> str:
    return f"{'bad' if expected == REJECT else 'odd'}-{kind}"


def write_mixed_corpus(folder: Path, good_rows: list[dict], images_from: Path, kinds: set[str] | None = None) -> dict:
    """Good rows (sample passages, their images copied) and the hostile rows of `kinds` (all by default)
    in `folder`. Returns {"hostile": {source: (kind, expected)}, "good": [doc_id, ...]}, where a row's
    source is `<file>:<line>` (1-based JSONL line) or `<file>#row<n>` (0-based Parquet row), as ingest's
    `source` column."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    want = set(row_kinds()) if kinds is None else kinds
    lines: list[bytes] = []
    hostile: dict[str, tuple[str, str]] = {}

    def add(kind: str, outcome: str, line: bytes) -> None:
        if b"\n" in line:
            raise ValueError(f"hostile kind {kind}: its line holds a line break")
        lines.append(line)
        hostile[f"{JSONL}:{len(lines)}"] = (kind, outcome)

    for row in good_rows:
        record = {k: row[k] for k in ("doc_id", "title", "text", "image", "domain") if k in row}
        if "image" in record:
            shutil.copy(images_from / record["image"], folder / record["image"])
        lines.append(json.dumps(record, ensure_ascii=False).encode())
    for kind, (outcome, make) in LINES.items():
        if kind in want:
            dup = {"doc_id": good_rows[0]["doc_id"], "text": _text(kind)}
            add(kind, outcome, json.dumps(dup).encode() if make is None else make(kind))
    for kind, (outcome, make) in IMAGE_FILES.items():
        if kind in want:
            name = f"images/{kind}.{'jpg' if 'jpeg' in kind or 'html' in kind else 'png'}"
            (folder / name).write_bytes(make())
            add(kind, outcome, json.dumps({"doc_id": doc_id(kind, outcome), "text": _text(kind), "image": name}).encode())
    for kind, (outcome, value) in IMAGE_PATHS.items():
        if kind in want:
            add(kind, outcome, json.dumps({"doc_id": doc_id(kind, outcome), "text": _text(kind), "image": value}).encode())
    (folder / JSONL).write_bytes(b"".join(line + b"\n" for line in lines))
    chosen = [(k, o, r) for k, (o, r) in PARQUET_ROWS.items() if k in want]
    if chosen:
        image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        schema = pa.schema([("doc_id", pa.string()), ("text", pa.string()), ("image", image)])
        rows = [{"doc_id": doc_id(k, o), **r} for k, o, r in chosen]
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / PARQUET)
        hostile |= {f"{PARQUET}#row{i}": (k, o) for i, (k, o, _) in enumerate(chosen)}
    return {"hostile": hostile, "good": [r["doc_id"] for r in good_rows]}


def _good_parquet(rows: int = 6) -> pa.Table:
    return pa.table({"doc_id": [f"p{i}" for i in range(rows)], "text": [_text(f"parquet row {i}") for i in range(rows)]})


def _bytes_of(table: pa.Table, **kw) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


# kind -> (expected: "error" (the run stops with a clear error naming the file or column) or "complete"
# (every row ingested or rejected with a reason), the file's bytes).
FILE_KINDS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "parquet_corrupt_footer": ("error", lambda: _bytes_of(_good_parquet())[:-8] + b"\x00\x01\x02\x03PAR1"),
    "parquet_truncated": ("error", lambda: _bytes_of(_good_parquet())[:200]),
    "parquet_not_parquet": ("error", lambda: b'{"doc_id": "x", "text": "a JSON line in a .parquet file"}\n'),
    "parquet_text_int": ("error", lambda: _bytes_of(pa.table({"doc_id": ["a", "b"], "text": [1, 2]}))),
    "parquet_text_nested_list": ("error", lambda: _bytes_of(pa.table({"doc_id": ["a"], "text": [["x", "y"]]}))),
    "parquet_text_struct": ("error", lambda: _bytes_of(pa.table({"doc_id": ["a"], "text": [{"t": "x"}]}))),
    "parquet_no_text_column": ("error", lambda: _bytes_of(pa.table({"doc_id": ["a"], "body": ["x"]}))),
    "parquet_huge_row_group": ("complete", lambda: _bytes_of(_good_parquet(30_000), row_group_size=30_000)),
}


def write_file_kind(folder: Path, kind: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.parquet"
    path.write_bytes(FILE_KINDS[kind][1]())
    return path
