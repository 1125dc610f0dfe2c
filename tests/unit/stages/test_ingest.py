"""pipeline/stages/ingest.py: record validation, text normalisation, stable ids, and the dedup commit hook.

`ingest_batch` is called directly on the table the runner would hand it: `read_jsonl_shard` output
tagged with `_shard` / `_src` by `tag_rows`. No Ray.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.columns import READ
from pipeline.config import to_dict
from pipeline.io.corpus import plan_corpus, read_jsonl_shard
from pipeline.io.dedup import FirstSeen
from pipeline.io.fs import RunFS
from pipeline.io.image_store import ImageStore
from pipeline.io.shards import tag_rows
from pipeline.stage import INTERNAL, OK, REASON, STATUS
from pipeline.stages.ingest import (
    OUTPUT_SCHEMA,
    Ingest,
    IngestConfig,
    RecordReject,
    content_hash,
    ingest_batch,
    normalise_text,
    validate_record,
)
from tests.support.ingest import commit_statuses

MAX_CHARS = 60
CONFIG = IngestConfig(path="unused", max_chars=MAX_CHARS)


def shard_table(folder: Path, records: list, name: str = "c.jsonl", shard: str = "000000") -> pa.Table:
    """Write records (dicts, or raw bytes lines) as JSONL and read them back as one tagged shard."""
    path = folder / name
    lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in records]
    path.write_bytes(b"\n".join(lines) + b"\n")
    (spec,) = plan_corpus(str(path), IngestConfig().columns, 10_000)
    return tag_rows(read_jsonl_shard(spec, None), shard)


def run_ingest(folder: Path, records: list, **kwargs) -> list[dict]:
    return ingest(shard_table(folder, records, **kwargs), folder).to_pylist()


def ingest(table: pa.Table, folder: Path) -> pa.Table:
    """`ingest_batch` as the runner calls it, with the run's image store under `folder/run`."""
    return ingest_batch(table, to_dict(CONFIG), str(folder / "run"))


def no_images(path: str) -> bytes:
    raise AssertionError(f"unexpected image load {path}")


# --- pure helpers -------------------------------------------------------------------------------------


def test_normalise_text_composes_decomposed_characters():
    assert normalise_text("cafe\u0301") == "caf\u00e9"


def test_normalise_text_collapses_whitespace_and_trims():
    assert normalise_text("  a \t b\n\n c\u00a0d  ") == "a b c d"


def test_normalise_text_collapses_exactly_the_whitespace_the_regex_did():
    """Every code point between two letters: the text as the regex version (`\\s+` -> space, trimmed) made it."""
    import re
    import sys

    control, space = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]"), re.compile(r"\s+")
    for code in range(1, sys.maxunicode + 1, 1):
        if 0xD800 <= code < 0xE000:
            continue
        text = f" a{chr(code)}b "
        before = space.sub(" ", control.sub(" ", unicodedata.normalize("NFC", text))).strip()
        assert normalise_text(text) == before, hex(code)


def test_normalise_text_turns_control_characters_into_spaces():
    assert normalise_text("a\x01b\x7fc") == "a b c"


def test_content_hash_ignores_case():
    assert content_hash("Golden Gate") == content_hash("golden gate")


def test_content_hash_differs_for_different_text():
    assert content_hash("Golden Gate") != content_hash("Golden Gates")


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"text": None}, "error:missing_text"),
        ({"text": ""}, "error:empty_text"),
        ({"text": " \t\n "}, "error:empty_text"),
        ({"text": "a\x00b"}, "error:nul_byte"),
        ({"text": "x" * (MAX_CHARS + 1)}, "error:text_too_long"),
        ({"text": 42}, "error:wrong_type:text"),
        ({"text": "ok", "doc_id": 1.5}, "error:wrong_type:doc_id"),
        ({"text": "ok", "doc_id": True}, "error:wrong_type:doc_id"),
        ({"text": "ok", "title": ["a"]}, "error:wrong_type:title"),
        ({"text": "ok", "title": "a\x00"}, "error:nul_byte"),
        ({"text": "ok", "image_url": "file:///etc/passwd"}, "error:bad_image_url"),
        ({"text": "ok", "image_url": "ftp://example.org/a.png"}, "error:bad_image_url"),
        ({"text": "ok", "image_url": "https:///no-host"}, "error:bad_image_url"),
        ({"text": "ok", "image": 5}, "error:wrong_type:image"),
        ({"text": "ok", "image": {"bytes": 5}}, "error:wrong_type:image"),
        ({"text": "ok", "image": {"bytes": "abc"}}, "error:wrong_type:image"),
        ({"text": "ok", "image": {"path": ["a"]}}, "error:wrong_type:image"),
        ({"text": "ok", "image": {"bytes": b"x", "path": 3}}, "error:wrong_type:image"),
        ({"text": "ok", "image": "a\x00.png"}, "error:nul_byte"),
        ({"text": "ok", "image": {"path": "a\x00.png"}}, "error:nul_byte"),
        # A JSON "\ud800" escape decodes to a lone surrogate, which no UTF-8 (so no Arrow string) can hold.
        ({"text": "a\ud800b"}, "error:invalid_unicode"),
        ({"text": "ok", "doc_id": "\udfff"}, "error:invalid_unicode"),
        ({"text": "ok", "title": "t\udc80"}, "error:invalid_unicode"),
        ({"text": "ok", "domain": "\ud83d"}, "error:invalid_unicode"),
        ({"text": "ok", "image_url": "https://x.org/\ud800"}, "error:invalid_unicode"),
        ({"text": "ok", "image": "\ud800.png"}, "error:invalid_unicode"),
        ({"text": "ok", "image": {"bytes": b"x", "path": "\ud800.png"}}, "error:invalid_unicode"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_validate_record_rejects_bad_field_with_reason(record, reason):
    with pytest.raises(RecordReject) as err:
        validate_record(record, CONFIG, no_images)
    assert err.value.reason == reason


def test_validate_record_measures_length_after_normalising():
    text = "word " * (MAX_CHARS // 5) + "   " * 50
    assert len(validate_record({"text": text}, CONFIG, no_images)["text"]) <= MAX_CHARS


def test_validate_record_accepts_http_image_url():
    assert validate_record({"text": "ok", "image_url": "HTTPS://example.org/a.png"}, CONFIG, no_images)[
        "image_url"
    ] == ("HTTPS://example.org/a.png")


def test_validate_record_turns_blank_title_into_none():
    assert validate_record({"text": "ok", "title": "   "}, CONFIG, no_images)["title"] is None


def test_missing_doc_id_gets_a_derived_id_from_the_text():
    row = validate_record({"text": "Some passage."}, CONFIG, no_images)
    assert (row["doc_id"], row["doc_id_derived"]) == (f"h{content_hash('Some passage.')[:16]}", True)


def test_derived_id_is_the_same_for_the_same_normalised_text():
    a = validate_record({"text": "Some  passage."}, CONFIG, no_images)["doc_id"]
    b = validate_record({"text": " Some passage.\n", "doc_id": "   "}, CONFIG, no_images)["doc_id"]
    assert a == b


def test_integer_doc_id_becomes_a_string():
    assert validate_record({"text": "ok", "doc_id": 17}, CONFIG, no_images)["doc_id"] == "17"


def test_validate_record_rejects_nul_byte_in_doc_id():
    with pytest.raises(RecordReject, match="nul_byte"):
        validate_record({"text": "ok", "doc_id": "a\x00b"}, CONFIG, no_images)


# --- ingest_batch over a tagged shard ------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, noise_png, animated_gif) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "images").mkdir()
    (folder / "images" / "ok.png").write_bytes(noise_png)
    (folder / "images" / "anim.gif").write_bytes(animated_gif)
    (folder / "images" / "cut.png").write_bytes(noise_png[: len(noise_png) // 2])
    (folder / "images" / "notes.png").write_text("I am text, not a PNG")
    os.mkfifo(folder / "pipe.png")
    return folder


# (record, expected status, expected reason, expected id); line numbers are 1-based positions in this list.
CASES = [
    ({"doc_id": "empty", "text": ""}, "rejected", "error:empty_text", "empty"),
    ({"doc_id": "blank", "text": "  \n\t "}, "rejected", "error:empty_text", "blank"),
    ({"doc_id": "nul", "text": "a\u0000b"}, "rejected", "error:nul_byte", "nul"),
    ({"doc_id": "long", "text": "x" * (MAX_CHARS + 1)}, "rejected", "error:text_too_long", "long"),
    ({"doc_id": "int-text", "text": 5}, "rejected", "error:wrong_type:text", "int-text"),
    ({"doc_id": ["x"], "text": "list id"}, "rejected", "error:wrong_type:doc_id", "c.jsonl:6"),
    ({"doc_id": "int-title", "text": "t", "title": 3}, "rejected", "error:wrong_type:title", "int-title"),
    (
        {"doc_id": "file-url", "text": "t", "image_url": "file:///etc/passwd"},
        "rejected",
        "error:bad_image_url",
        "file-url",
    ),
    (
        {"doc_id": "ftp-url", "text": "t", "image_url": "ftp://x.org/a.png"},
        "rejected",
        "error:bad_image_url",
        "ftp-url",
    ),
    (
        {"doc_id": "no-file", "text": "t", "image": "images/missing.png"},
        "rejected",
        "error:image_missing",
        "no-file",
    ),
    (
        {"doc_id": "text-img", "text": "t", "image": "images/notes.png"},
        "rejected",
        "error:image_not_an_image",
        "text-img",
    ),
    (
        {"doc_id": "cut-img", "text": "t", "image": "images/cut.png"},
        "rejected",
        "error:image_truncated",
        "cut-img",
    ),
    (b'{"doc_id": "broken", "text": ', "rejected", "error:invalid_json", "c.jsonl:13"),
    (b"[1, 2, 3]", "rejected", "error:not_an_object", "c.jsonl:14"),
    (b'{"doc_id": "latin1", "text": "caf\xe9"}', "rejected", "error:invalid_utf8", "c.jsonl:15"),
    ({"doc_id": 7, "text": "integer id"}, "ok", "", "7"),
    ({"doc_id": "png", "text": "with image", "image": "images/ok.png"}, "ok", "", "png"),
    ({"doc_id": "gif", "text": "with gif", "image": "images/anim.gif"}, "ok", "", "gif"),
    ({"doc_id": "url", "text": "with url", "image_url": "https://example.org/a.jpg"}, "ok", "", "url"),
    # json.dumps writes "\ud800" as an escape: the line is valid JSON and valid UTF-8.
    ({"doc_id": "lone-surrogate", "text": "a\ud800b"}, "rejected", "error:invalid_unicode", "lone-surrogate"),
    ({"doc_id": "id\udc00", "text": "t"}, "rejected", "error:invalid_unicode", "c.jsonl:21"),
    ({"doc_id": "int-b", "text": "t", "image": {"bytes": 5}}, "rejected", "error:wrong_type:image", "int-b"),
    ({"doc_id": "dir", "text": "t", "image": "images"}, "rejected", "error:image_not_a_file", "dir"),
    ({"doc_id": "fifo", "text": "t", "image": "pipe.png"}, "rejected", "error:image_not_a_file", "fifo"),
    ({"doc_id": "zero", "text": "t", "image": "/dev/zero"}, "rejected", "error:image_not_a_file", "zero"),
]


@pytest.fixture(scope="module")
def batch(corpus_dir) -> list[dict]:
    return run_ingest(corpus_dir, [c[0] for c in CASES])


@pytest.mark.parametrize("case", range(len(CASES)), ids=[str(c[3]) for c in CASES])
def test_ingest_batch_gives_each_record_its_status_reason_and_id(batch, case):
    _, status, reason, row_id = CASES[case]
    row = batch[case]
    assert (row[STATUS], row[REASON], row["id"]) == (status, reason, row_id)


def test_ingest_batch_output_of_bad_records_writes_as_parquet(corpus_dir):
    table = ingest(shard_table(corpus_dir, [c[0] for c in CASES]), corpus_dir)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    back = pq.read_table(io.BytesIO(buf.getvalue()))
    assert back.num_rows == len(CASES) and back.to_pylist() == table.to_pylist()


def test_ingest_batch_cites_file_and_line_as_source(batch):
    assert [r["source"] for r in batch] == [f"c.jsonl:{i}" for i in range(1, len(CASES) + 1)]


def test_ingest_batch_output_has_schema_plus_internal_columns(corpus_dir):
    table = ingest(shard_table(corpus_dir, [{"text": "x"}]), corpus_dir)
    assert table.schema.names == OUTPUT_SCHEMA.names + ["_shard", "_src", "_parent", READ, STATUS, REASON]


def test_ingest_batch_keeps_shard_tags_in_row_order(corpus_dir):
    table = ingest(shard_table(corpus_dir, [{"text": "a"}, b"junk", {"text": "c"}], shard="000042"), corpus_dir)
    assert (table["_shard"].to_pylist(), table["_src"].to_pylist()) == (["000042"] * 3, [0, 1, 2])


def stored(corpus_dir: Path, ref: dict) -> bytes:
    return ImageStore.from_uri(str(corpus_dir / "run")).get(ref)


def test_ingest_batch_keeps_a_plain_png_byte_identical_in_the_store(batch, noise_png, corpus_dir):
    ref = batch[[c[3] for c in CASES].index("png")]["image"]
    assert (stored(corpus_dir, ref), ref["format"], ref["sha256"]) == (
        noise_png, "png", hashlib.sha256(noise_png).hexdigest(),
    )


def test_ingest_batch_stores_a_converted_gif_as_png(batch, corpus_dir):
    ref = batch[[c[3] for c in CASES].index("gif")]["image"]
    assert (ref["format"], stored(corpus_dir, ref)[:8]) == ("png", b"\x89PNG\r\n\x1a\n")


def test_ingest_batch_rows_carry_only_references_with_the_image_size(batch):
    ref = batch[[c[3] for c in CASES].index("png")]["image"]
    assert set(ref) == {"sha256", "width", "height", "format"} and ref["width"] > 0 and ref["height"] > 0


def test_ingest_batch_run_twice_stores_each_image_once(corpus_dir):
    records = [{"doc_id": "p1", "text": "a", "image": "images/ok.png"}, {"doc_id": "p2", "text": "b", "image": "images/ok.png"}]
    first = run_ingest(corpus_dir, records)
    again = run_ingest(corpus_dir, records)
    listing = ImageStore.from_uri(str(corpus_dir / "run")).listing()
    assert first[0]["image"] == again[1]["image"] and first[0]["image"]["sha256"] in listing


def test_ingest_batch_normalises_text_to_nfc_and_collapses_whitespace(corpus_dir):
    (row,) = run_ingest(corpus_dir, [{"doc_id": "n", "text": "  Cafe\u0301   au\n\nlait "}])
    assert row["text"] == "Caf\u00e9 au lait"


def test_ingest_batch_marks_derived_doc_ids(corpus_dir):
    rows = run_ingest(corpus_dir, [{"text": "no id here"}, {"doc_id": "given", "text": "has id"}])
    assert [(r["doc_id_derived"], r["id"].startswith("h")) for r in rows] == [(True, True), (False, False)]


def test_ingest_batch_derived_id_is_stable_across_runs(corpus_dir, tmp_path):
    first = run_ingest(corpus_dir, [{"text": "same passage"}])[0]["id"]
    second = run_ingest(tmp_path, [{"text": "other"}, {"text": "same passage"}], name="d.jsonl")[1]["id"]
    assert first == second


def test_ingest_batch_survives_a_truncated_animated_gif(tmp_path, animated_gif):
    (tmp_path / "bad.gif").write_bytes(animated_gif[:-25])
    rows = run_ingest(
        tmp_path, [{"doc_id": "fine", "text": "fine"}, {"doc_id": "gif", "text": "g", "image": "bad.gif"}]
    )
    assert (len(rows), rows[0][STATUS]) == (2, OK)


# --- dedup (io/dedup.py) ---------------------------------------------------------------------------


def statuses(table: pa.Table) -> list[tuple[str, str]]:
    return list(zip(table[STATUS].to_pylist(), table[REASON].to_pylist()))


def committed(stage: Ingest, table: pa.Table, seen: FirstSeen | None = None) -> list[tuple[str, str]]:
    return commit_statuses(stage, table, seen or FirstSeen.local(stage.dedup))


DEDUP_RECORDS = [
    {"doc_id": "a", "text": "The first passage."},
    {"doc_id": "b", "text": "the  FIRST passage."},
    {"doc_id": "a", "text": "A different passage."},
    {"doc_id": "c", "text": ""},
    {"doc_id": "d", "text": "Another passage."},
]


def test_dedup_filters_repeated_text_and_rejects_reused_doc_id(tmp_path):
    table = ingest(shard_table(tmp_path, DEDUP_RECORDS), tmp_path)
    assert committed(Ingest(CONFIG, None), table) == [
        ("ok", ""),
        ("filtered", "filter:duplicate_text"),
        ("rejected", "error:duplicate_doc_id"),
        ("rejected", "error:empty_text"),
        ("ok", ""),
    ]


def test_dedup_state_carries_across_shards(tmp_path):
    stage = Ingest(CONFIG, None)
    state = FirstSeen.local(stage.dedup)
    first = ingest(shard_table(tmp_path, DEDUP_RECORDS[:1], name="1.jsonl"), tmp_path)
    second = ingest(shard_table(tmp_path, DEDUP_RECORDS[1:3], name="2.jsonl", shard="000001"), tmp_path)
    committed(stage, first, state)
    assert committed(stage, second, state) == [
        ("filtered", "filter:duplicate_text"),
        ("rejected", "error:duplicate_doc_id"),
    ]


def test_dedup_rebuilt_from_committed_parts_dedups_the_next_shard(tmp_path):
    run_fs = RunFS.from_uri(str(tmp_path / "run"))
    first = ingest(shard_table(tmp_path, DEDUP_RECORDS[:1], name="1.jsonl"), tmp_path)
    # What the runner commits: the kept rows without internal columns.
    run_fs.write_parquet(
        "01_ingest/part-000000.parquet", first.drop_columns([c for c in first.column_names if c in INTERNAL])
    )
    resumed = Ingest(CONFIG, None)
    state = FirstSeen.local(resumed.dedup)
    assert state.load(run_fs.root, ["01_ingest/part-000000.parquet"], resumed.dedup_keys) == 1
    second = ingest(shard_table(tmp_path, DEDUP_RECORDS[1:], name="2.jsonl", shard="000001"), tmp_path)
    assert committed(resumed, second, state) == [
        ("filtered", "filter:duplicate_text"),
        ("rejected", "error:duplicate_doc_id"),
        ("rejected", "error:empty_text"),
        ("ok", ""),
    ]


def test_dedup_rebuilt_from_no_parts_holds_no_key(tmp_path):
    seen = FirstSeen.local(Ingest.dedup)
    assert seen.load(str(tmp_path), [], Ingest(CONFIG, None).dedup_keys) == 0 and seen.size() == (0, 0)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("scan.tif", "TIFF"),
        ("logo.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n0 setgray showpage\n"),
        ("logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16"/>'),
        ("page.png", b"<!DOCTYPE html><html><body>Forbidden</body></html>"),
        ("icon.ico", "ICO"),
    ],
)
def test_ingest_batch_rejects_a_corpus_image_outside_the_allowed_formats(corpus_dir, name, data):
    from PIL import Image

    if isinstance(data, str):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (9, 9, 9)).save(buf, format=data)
        data = buf.getvalue()
    (corpus_dir / "images" / name).write_bytes(data)
    (row,) = ingest(shard_table(corpus_dir, [{"doc_id": "d", "text": "a", "image": f"images/{name}"}]),
                    corpus_dir).to_pylist()
    assert (row[STATUS], row[REASON]) == ("rejected", "error:image_format_not_allowed")


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_ingest_batch_fails_the_shard_when_an_image_read_fails(corpus_dir, monkeypatch):
    from pipeline.io import images

    monkeypatch.setattr(images, "READ_RETRY", images.ReadRetry(attempts=2, base_wait_s=0.0, max_wait_s=0.0))
    table = shard_table(corpus_dir, [{"doc_id": "ok", "text": "a"}, {"doc_id": "d", "text": "b", "image": "/proc/self/mem"}])
    with pytest.raises(images.ImageReadError):
        ingest(table, corpus_dir)
