"""pipeline/stages/ingest.py under generated input: no record can fail the shard.

Hypothesis writes JSONL files of arbitrary JSON values (any code point, surrogates, NUL, huge numbers,
NaN, nesting, odd keys, non-objects) and raw byte lines (invalid UTF-8, BOMs, CRLF), plans and reads them
as the runner does and calls `ingest_batch` on each shard. Property: nothing raises, every record is
exactly one output row with a known status and reason, and the output table writes as Parquet (where
a lone surrogate used to end the whole run). Image paths point at a regular image, a directory, a FIFO,
a device and an over-limit file, so the loader's refusals are exercised too.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.config import to_dict
from pipeline.errors import StageInputError
from pipeline.io.corpus import plan_corpus, read_jsonl_shard
from pipeline.io.image_store import image_ref
from pipeline.io.images import ImageLimits
from pipeline.io.shards import tag_rows
from pipeline.stage import FILTERED, OK, REASON, REJECTED, STATUS
from pipeline.stages.ingest import OUTPUT_SCHEMA, IngestConfig, _ingest_record, ingest_batch
from tests.support.ingest import FIELDS, INGEST_REASONS

MAX_IMAGE_BYTES = 4096
CONFIG = IngestConfig(path="unused", max_chars=200, images=ImageLimits(max_bytes=MAX_IMAGE_BYTES))
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Strings: any code point (surrogates, NUL, controls, BOM, line breaks), plus values that mean something.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=24)
PATHS = st.sampled_from(
    [
        "ok.png",
        "images",
        "fifo.png",
        "zero.png",
        "big.png",
        "cut.png",
        "nope.png",
        "/dev/zero",
        "/dev/urandom",
        "/proc/self/status",
        "../",
        "",
        " ",
        "ok.png\x00",
        "\ud800.png",
        "ok.png/x",
    ]
)
SPECIAL = st.sampled_from(
    [
        "",
        " \t\n",
        "\x00",
        "\ud800",
        "a\udfffb",
        "\ufeff",
        "\r\n",
        "https://example.org/a.png",
        "ftp://x/y",
        "x" * 201,
    ]
)
STRINGS = ANY_TEXT | SPECIAL | PATHS
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats()
    | STRINGS
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(STRINGS, kids, max_size=3),
    max_leaves=8,
)
IMAGES = (
    PATHS
    | st.fixed_dictionaries({}, optional={"bytes": JSON_VALUES, "path": PATHS | JSON_VALUES})
    | JSON_VALUES
)
RECORDS = st.fixed_dictionaries(
    {},
    optional={
        "doc_id": STRINGS | JSON_VALUES,
        "text": STRINGS | JSON_VALUES,
        "title": STRINGS | JSON_VALUES,
        "image": IMAGES,
        "image_url": STRINGS | JSON_VALUES,
        "domain": STRINGS | JSON_VALUES,
    },
).flatmap(lambda rec: st.dictionaries(STRINGS, JSON_VALUES, max_size=2).map(lambda odd: {**odd, **rec}))


@st.composite
def json_line(draw) -> bytes:
    value = draw(RECORDS | JSON_VALUES)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    # ensure_ascii=False writes a surrogate as itself: surrogatepass turns it into bytes that are not UTF-8.
    return text.encode("utf-8", "surrogatepass")


# Numbers JSON allows in Python but no Arrow column or str() can take as they are.
NUMBER_LINES = st.sampled_from([b"1e400", b"-1e400", b"NaN", b"-Infinity", b"Infinity", b"9" * 5000]).map(
    lambda n: b'{"text": "t", "doc_id": ' + n + b', "title": ' + n + b"}"
)
RAW_LINES = st.binary(max_size=40) | NUMBER_LINES | st.sampled_from([b"[" * 5000, b"\xef\xbb\xbf", b"{}"])


@st.composite
def jsonl_file(draw) -> bytes:
    lines = draw(st.lists(json_line() | RAW_LINES, min_size=1, max_size=6))
    lines = [(b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + line for line in lines]
    end = draw(st.sampled_from([b"\n", b"\r\n"]))
    return end.join(lines) + draw(st.sampled_from([b"", end]))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, noise_png) -> Path:
    """A corpus folder whose image paths cover every kind of file the loader must refuse or read."""
    folder = tmp_path_factory.mktemp("fuzz")
    Image.new("RGB", (16, 12), (200, 30, 40)).save(folder / "ok.png")
    (folder / "cut.png").write_bytes(noise_png[:100])
    (folder / "big.png").write_bytes(b"\x89PNG" + b"\0" * MAX_IMAGE_BYTES)
    (folder / "images").mkdir()
    os.mkfifo(folder / "fifo.png")
    os.symlink("/dev/zero", folder / "zero.png")
    return folder


def check_output(table: pa.Table, out: pa.Table) -> None:
    """The property every generated shard must meet."""
    assert out.num_rows == table.num_rows
    assert out["_src"].to_pylist() == table["_src"].to_pylist()
    for status, reason in zip(out[STATUS].to_pylist(), out[REASON].to_pylist()):
        assert status in (OK, FILTERED, REJECTED)
        assert (reason == "") if status == OK else (reason in INGEST_REASONS), (status, reason)
    pq.write_table(out, io.BytesIO())


@pytest.mark.timeout(120)
@FUZZ
@given(data=jsonl_file(), shard_rows=st.integers(1, 4))
# The inputs that failed whole runs before: a surrogate escape, image fields of the wrong type, NUL in a
# path, a FIFO (open() waited forever) and /dev/zero (read() never ended).
@example(data=b'{"text": "a\\ud800b"}\n{"text": "t", "title": "\\udc00"}', shard_rows=1)
@example(data=b'{"text": "t", "image": {"bytes": 5}}\n{"text": "t", "image": {"path": ["a"]}}', shard_rows=2)
@example(data=b'{"text": "t", "image": "a\\u0000b"}\n{"text": "t", "image": "fifo.png"}', shard_rows=2)
@example(
    data=b'{"text": "t", "image": "/dev/zero"}\r\n\xef\xbb\xbf\n{"text": "t", "image": "images"}',
    shard_rows=3,
)
def test_ingest_batch_turns_any_jsonl_into_one_known_status_per_record(corpus_dir, data, shard_rows):
    path = corpus_dir / "c.jsonl"
    path.write_bytes(data)
    records = sum(1 for line in data.split(b"\n") if line.strip())
    if not records:
        with pytest.raises(StageInputError, match="holds no records"):
            plan_corpus(str(path), IngestConfig().columns, shard_rows)
        return
    specs = plan_corpus(str(path), IngestConfig().columns, shard_rows)
    assert sum(s.rows for s in specs) == records
    for spec in specs:
        table = tag_rows(read_jsonl_shard(spec, None), spec.shard)
        assert table.num_rows == spec.rows
        check_output(table, ingest_batch(table, to_dict(CONFIG), str(corpus_dir / "run")))


# Python values a Parquet column can hand `iter_records` (bytes, nested structs, decimals, dates...).
ARROW_VALUES = st.recursive(
    SCALARS | st.binary(max_size=16) | st.decimals(allow_nan=False) | st.dates() | st.datetimes(),
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.dictionaries(st.sampled_from(["bytes", "path", "x"]), kids, max_size=3)
    ),
    max_leaves=6,
)


def _ref(image) -> dict:
    """The reference a run's image store would return, without a store."""
    return image_ref(image.data, image.format, image.width, image.height)


@pytest.mark.timeout(120)
@FUZZ
@given(record=st.fixed_dictionaries({}, optional={f: ARROW_VALUES | STRINGS for f in FIELDS}))
@example(record={"text": "t", "image": {"bytes": "abc"}})
@example(record={"text": "t", "image": {"bytes": b"\x89PNG", "path": 7}})
def test_ingest_record_gives_a_row_arrow_can_store_for_any_python_values(corpus_dir, record):
    row, status, reason = _ingest_record(record, "c.parquet#row0", str(corpus_dir), CONFIG, _ref)
    assert reason == "" if status == OK else (status, reason in INGEST_REASONS) == (REJECTED, True)
    pa.Table.from_pylist([row], schema=OUTPUT_SCHEMA)
