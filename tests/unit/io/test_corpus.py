"""pipeline/io/corpus.py: finding corpus files, planning shards, reading them back, parsing records."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import StageInputError
from pipeline.io.corpus import (
    CorpusColumns,
    RecordError,
    RecordReject,
    iter_records,
    load_local_image,
    plan_corpus,
    read_jsonl_shard,
    read_parquet_corpus_shard,
)

COLS = CorpusColumns()


def jsonl_line(doc_id: str) -> str:
    return json.dumps({"doc_id": doc_id, "text": f"text of {doc_id}"})


# Lines 2 and 4 are blank (one empty, one spaces only); the file does not end with a newline.
LINES = [jsonl_line("a"), "", jsonl_line("b"), "   ", jsonl_line("c"), jsonl_line("d")]


@pytest.fixture
def jsonl(tmp_path) -> Path:
    path = tmp_path / "f.jsonl"
    path.write_text("\n".join(LINES), encoding="utf-8")
    return path


def read_all(specs) -> list[pa.Table]:
    return [read_jsonl_shard(s, None) for s in specs]


def write_parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


# --- JSONL planning and reading -------------------------------------------------------------------


def test_plan_jsonl_counts_only_nonblank_lines_as_rows(jsonl):
    assert sum(s.rows for s in plan_corpus(str(jsonl), COLS, 100)) == 4


@pytest.mark.parametrize("shard_rows", [1, 2, 3, 4, 10])
def test_jsonl_shards_read_back_exactly_the_planned_rows(jsonl, shard_rows):
    specs = plan_corpus(str(jsonl), COLS, shard_rows)
    tables = read_all(specs)
    assert [t.num_rows for t in tables] == [s.rows for s in specs]


@pytest.mark.parametrize("shard_rows", [1, 2, 3, 10])
def test_jsonl_shards_together_hold_every_record_once_in_order(jsonl, shard_rows):
    raws = [r for t in read_all(plan_corpus(str(jsonl), COLS, shard_rows)) for r in t["_raw"].to_pylist()]
    assert raws == [line.encode() for line in LINES if line.strip()]


@pytest.mark.parametrize("shard_rows", [1, 2, 3, 10])
def test_jsonl_where_cites_the_file_line_number(jsonl, shard_rows):
    wheres = [w for t in read_all(plan_corpus(str(jsonl), COLS, shard_rows)) for w in t["_where"].to_pylist()]
    assert wheres == ["f.jsonl:1", "f.jsonl:3", "f.jsonl:5", "f.jsonl:6"]


def test_shard_rows_splits_jsonl_into_sequential_shards(jsonl):
    specs = plan_corpus(str(jsonl), COLS, 3)
    assert [(s.shard, s.rows) for s in specs] == [("000000", 3), ("000001", 1)]


def test_jsonl_shard_byte_ranges_tile_the_file_without_overlap(jsonl):
    specs = plan_corpus(str(jsonl), COLS, 1)
    assert (
        all(a.stop <= b.start for a, b in itertools.pairwise(specs))
        and specs[-1].stop == jsonl.stat().st_size
    )


def test_jsonl_crlf_line_endings_are_stripped(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b'{"text": "a"}\r\n{"text": "b"}\r\n')
    assert read_jsonl_shard(plan_corpus(str(path), COLS, 10)[0], None)["_raw"].to_pylist() == [
        b'{"text": "a"}',
        b'{"text": "b"}',
    ]


def test_jsonl_utf8_byte_order_mark_does_not_cost_the_first_record(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n{"text": "b"}\n')
    table = read_jsonl_shard(plan_corpus(str(path), COLS, 10)[0], None)
    assert [rec["text"] for rec, _, _ in iter_records(table, COLS)] == ["a", "b"]


def test_jsonl_base_dir_is_the_corpus_folder(jsonl):
    assert set(read_all(plan_corpus(str(jsonl), COLS, 10))[0]["_base"].to_pylist()) == {str(jsonl.parent)}


# --- folders and globs ----------------------------------------------------------------------------


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.jsonl").write_text(jsonl_line("b1") + "\n" + jsonl_line("b2") + "\n")
    (root / "sub" / "c.jsonl").write_text(jsonl_line("c1") + "\n")
    write_parquet(root / "a.parquet", {"text": ["p1", "p2", "p3"]})
    (root / "notes.txt").write_text("not a corpus file")
    (root / ".hidden.jsonl").write_text(jsonl_line("hidden") + "\n")
    return root


def test_folder_input_plans_every_corpus_file_in_sorted_order(corpus_dir):
    sources = [
        Path(s.source).relative_to(corpus_dir).as_posix() for s in plan_corpus(str(corpus_dir), COLS, 2)
    ]
    assert sources == ["a.parquet", "a.parquet", "b.jsonl", "sub/c.jsonl"]


def test_folder_input_numbers_shards_across_files(corpus_dir):
    assert [s.shard for s in plan_corpus(str(corpus_dir), COLS, 2)] == [
        "000000",
        "000001",
        "000002",
        "000003",
    ]


def test_glob_input_plans_only_matching_files(corpus_dir):
    specs = plan_corpus(str(corpus_dir / "**" / "*.jsonl"), COLS, 10)
    assert sorted(Path(s.source).name for s in specs) == ["b.jsonl", "c.jsonl"]


def test_glob_matching_nothing_raises(corpus_dir):
    with pytest.raises(StageInputError, match="no .jsonl"):
        plan_corpus(str(corpus_dir / "*.csv"), COLS, 10)


# --- whole-input problems stop the run before any work ---------------------------------------------


def test_missing_path_raises_naming_the_path(tmp_path):
    with pytest.raises(StageInputError, match="nope.jsonl"):
        plan_corpus(str(tmp_path / "nope.jsonl"), COLS, 10)


@pytest.mark.parametrize("content", ["", "\n\n   \n"], ids=["zero-bytes", "blank-lines"])
def test_empty_jsonl_raises_naming_the_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(StageInputError, match="empty.jsonl"):
        plan_corpus(str(path), COLS, 10)


def test_folder_of_empty_files_raises(tmp_path):
    (tmp_path / "a.jsonl").write_text("")
    write_parquet(tmp_path / "b.parquet", {"text": pa.array([], pa.string())})
    with pytest.raises(StageInputError, match="no records"):
        plan_corpus(str(tmp_path), COLS, 10)


@pytest.mark.parametrize("pattern", ["notes.txt", "*.txt"], ids=["path", "glob"])
def test_unsupported_extension_raises_naming_the_file(tmp_path, pattern):
    (tmp_path / "notes.txt").write_text('{"text": "x"}\n')
    with pytest.raises(StageInputError, match=r"unsupported file type .*notes\.txt"):
        plan_corpus(str(tmp_path / pattern), COLS, 10)


def test_corrupt_parquet_raises_naming_the_file(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(StageInputError, match="junk.parquet"):
        plan_corpus(str(path), COLS, 10)


def test_truncated_parquet_raises_naming_the_file(tmp_path):
    path = write_parquet(tmp_path / "cut.parquet", {"text": ["a", "b"]})
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(StageInputError, match="cut.parquet"):
        plan_corpus(str(path), COLS, 10)


def test_parquet_int_text_column_raises_naming_column_and_file(tmp_path):
    path = write_parquet(tmp_path / "ints.parquet", {"text": [1, 2]})
    with pytest.raises(StageInputError, match=r"column 'text' in .*ints\.parquet must be a string"):
        plan_corpus(str(path), COLS, 10)


def test_parquet_wrong_type_in_optional_column_raises_naming_it(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"text": ["a"], "title": [3.5]})
    with pytest.raises(StageInputError, match="column 'title'"):
        plan_corpus(str(path), COLS, 10)


def test_parquet_without_text_column_raises_listing_its_columns(tmp_path):
    path = write_parquet(tmp_path / "body.parquet", {"body": ["a"], "doc_id": ["x"]})
    with pytest.raises(
        StageInputError, match=r"body\.parquet has no text column 'text'; its columns: body, doc_id"
    ):
        plan_corpus(str(path), COLS, 10)


def test_parquet_integer_doc_ids_are_accepted(tmp_path):
    path = write_parquet(tmp_path / "ids.parquet", {"text": ["a"], "doc_id": [7]})
    assert plan_corpus(str(path), COLS, 10)[0].rows == 1


# --- Parquet shards ---------------------------------------------------------------------------------


def test_parquet_shards_are_row_ranges(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", {"text": list("abcde")})
    assert [(s.start, s.stop, s.rows) for s in plan_corpus(str(path), COLS, 2)] == [
        (0, 2, 2),
        (2, 4, 2),
        (4, 5, 1),
    ]


def test_parquet_shard_reads_its_rows_and_cites_row_numbers(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", {"text": list("abcde")})
    table = read_parquet_corpus_shard(plan_corpus(str(path), COLS, 2)[1], None)
    assert (table["text"].to_pylist(), table["_where"].to_pylist()) == (
        ["c", "d"],
        ["p.parquet#row2", "p.parquet#row3"],
    )


@pytest.mark.parametrize("shard_rows", [1, 3, 4, 7, 10])
def test_parquet_shards_across_row_groups_read_back_every_row_once_in_order(tmp_path, shard_rows):
    path = tmp_path / "groups.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(10)]}), path, row_group_size=3)
    specs = plan_corpus(str(path), COLS, shard_rows)
    texts = [t for s in specs for t in read_parquet_corpus_shard(s, None)["text"].to_pylist()]
    assert texts == [f"t{i}" for i in range(10)]


# --- column mapping -----------------------------------------------------------------------------------


def test_column_mapping_reads_renamed_parquet_text_column(tmp_path):
    cols = CorpusColumns(text="passage", doc_id="pid")
    path = write_parquet(tmp_path / "m.parquet", {"passage": ["hello"], "pid": ["p1"]})
    table = read_parquet_corpus_shard(plan_corpus(str(path), cols, 10)[0], None)
    record, _, _ = next(iter_records(table, cols))
    assert (record["text"], record["doc_id"]) == ("hello", "p1")


def test_column_mapping_reads_renamed_jsonl_keys(tmp_path):
    cols = CorpusColumns(text="passage")
    path = tmp_path / "m.jsonl"
    path.write_text('{"passage": "hello", "text": "ignored"}\n')
    record, _, _ = next(iter_records(read_jsonl_shard(plan_corpus(str(path), cols, 10)[0], None), cols))
    assert record["text"] == "hello"


def test_parquet_without_the_mapped_text_column_raises(tmp_path):
    path = write_parquet(tmp_path / "m.parquet", {"text": ["hello"]})
    with pytest.raises(StageInputError, match="no text column 'passage'"):
        plan_corpus(str(path), CorpusColumns(text="passage"), 10)


# --- per-record parse errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"text": "caf\xe9"}', "error:invalid_utf8"),
        (b'{"text": "unterminated', "error:invalid_json"),
        (b'["a", "b"]', "error:not_an_object"),
        (b'"just a string"', "error:not_an_object"),
    ],
    ids=["invalid-utf8", "invalid-json", "json-array", "json-string"],
)
def test_iter_records_turns_unparseable_line_into_record_error(tmp_path, raw, reason):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(raw + b"\n")
    record, where, _ = next(iter_records(read_jsonl_shard(plan_corpus(str(path), COLS, 10)[0], None), COLS))
    assert isinstance(record, RecordError) and (record.reason, where) == (reason, "bad.jsonl:1")


def test_iter_records_gives_missing_keys_as_none(tmp_path):
    path = tmp_path / "min.jsonl"
    path.write_text('{"text": "only text"}\n')
    record, _, _ = next(iter_records(read_jsonl_shard(plan_corpus(str(path), COLS, 10)[0], None), COLS))
    assert record == {
        "doc_id": None,
        "text": "only text",
        "title": None,
        "image": None,
        "image_url": None,
        "domain": None,
    }


def test_parse_turns_json_python_cannot_hold_into_invalid_json(tmp_path):
    # An integer past Python's 4300-digit limit raises ValueError; deep nesting raises RecursionError.
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b'{"text": "a", "doc_id": ' + b"9" * 5000 + b"}\n" + b"[" * 100_000 + b"\n")
    table = read_jsonl_shard(plan_corpus(str(path), COLS, 10)[0], None)
    assert [rec.reason for rec, _, _ in iter_records(table, COLS)] == ["error:invalid_json"] * 2


def test_byte_order_mark_at_the_start_of_a_later_line_is_not_data(tmp_path):
    # `cat a.jsonl b.jsonl` of two files saved by a Windows editor puts b's BOM mid-file.
    path = tmp_path / "cat.jsonl"
    path.write_bytes(b'{"text": "a"}\n\xef\xbb\xbf{"text": "b"}\n')
    table = read_jsonl_shard(plan_corpus(str(path), COLS, 1)[1], None)
    assert [rec["text"] for rec, _, _ in iter_records(table, COLS)] == ["b"]


@pytest.mark.parametrize("first", [b"\xef\xbb\xbf", b"\xef\xbb\xbf  \r"], ids=["bom-only", "bom-blank"])
def test_jsonl_shard_reads_back_as_many_rows_as_planned_after_a_bom_only_line(tmp_path, first):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(first + b'\n{"text": "a"}\n')
    (spec,) = plan_corpus(str(path), COLS, 10)
    assert read_jsonl_shard(spec, None).num_rows == spec.rows


# --- Parquet odd columns ------------------------------------------------------------------------------


def test_parquet_string_that_is_not_utf8_rejects_only_its_row(tmp_path):
    # Parquet readers do not check UTF-8; a lax writer can leave such bytes in a string column.
    text = pa.array([b"fine", b"caf\xe9", b"also fine"], pa.binary()).view(pa.string())
    path = write_parquet(tmp_path / "lax.parquet", {"text": text})
    table = read_parquet_corpus_shard(plan_corpus(str(path), COLS, 10)[0], None)
    records = [rec for rec, _, _ in iter_records(table, COLS)]
    assert [r.reason if isinstance(r, RecordError) else r["text"] for r in records] == [
        "fine",
        "error:invalid_utf8",
        "also fine",
    ]


def test_parquet_image_path_that_is_not_utf8_rejects_its_row(tmp_path):
    paths = pa.array([b"a.png", b"\xff.png"], pa.binary()).view(pa.string())
    image = pa.StructArray.from_arrays([pa.array([None, None], pa.binary()), paths], ["bytes", "path"])
    path = write_parquet(tmp_path / "img.parquet", {"text": ["a", "b"], "image": image})
    table = read_parquet_corpus_shard(plan_corpus(str(path), COLS, 10)[0], None)
    assert [isinstance(rec, RecordError) for rec, _, _ in iter_records(table, COLS)] == [False, True]


def test_parquet_column_appearing_twice_raises_naming_it(tmp_path):
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"]), path)
    with pytest.raises(StageInputError, match=r"column 'text' appears 2 times"):
        plan_corpus(str(path), COLS, 10)


def test_parquet_dictionary_encoded_strings_are_accepted(tmp_path):
    path = write_parquet(tmp_path / "cat.parquet", {"text": pa.array(["a", "b", "a"]).dictionary_encode()})
    table = read_parquet_corpus_shard(plan_corpus(str(path), COLS, 10)[0], None)
    assert [rec["text"] for rec, _, _ in iter_records(table, COLS)] == ["a", "b", "a"]


def test_parquet_unmapped_column_named_like_an_internal_one_is_ignored(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", {"text": ["a"], "_where": ["mine"], "_raw": [b"x"]})
    table = read_parquet_corpus_shard(plan_corpus(str(path), COLS, 10)[0], None)
    record, where, _ = next(iter_records(table, COLS))
    assert (record["text"], where) == ("a", "p.parquet#row0")


def test_mapping_a_column_to_an_internal_name_raises(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", {"_where": ["a"]})
    with pytest.raises(StageInputError, match=r"`ingest.columns.text` is '_where'"):
        plan_corpus(str(path), CorpusColumns(text="_where"), 10)


# --- local images: bounded, regular files only ------------------------------------------------------------


def reject_reason(base: Path, path: str, max_bytes: int = 1000) -> str:
    with pytest.raises(RecordReject) as err:
        load_local_image(str(base), path, max_bytes)
    return err.value.reason


def test_local_image_reads_a_regular_file_of_exactly_max_bytes(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x" * 10)
    assert load_local_image(str(tmp_path), "a.png", 10) == b"x" * 10


def test_local_image_larger_than_max_bytes_is_too_large_before_reading(tmp_path):
    # A sparse 1 TiB file: reading it whole would exhaust memory; its size alone decides.
    with open(tmp_path / "huge.png", "wb") as f:
        f.truncate(1 << 40)
    assert reject_reason(tmp_path, "huge.png") == "error:image_too_large"


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_local_image_that_reports_size_zero_is_read_bounded():
    # /proc files are regular files of st_size 0 that still return data.
    assert reject_reason(Path("/"), "/proc/self/status", max_bytes=10) == "error:image_too_large"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["directory", "fifo", "dev-zero", "dev-urandom", "link-to-dev-zero"])
def test_local_image_that_is_not_a_regular_file_is_a_reject_not_a_hang(tmp_path, kind):
    target = {"dev-zero": "/dev/zero", "dev-urandom": "/dev/urandom"}.get(kind, "x.png")
    if kind == "directory":
        (tmp_path / "x.png").mkdir()
    elif kind == "fifo":
        os.mkfifo(tmp_path / "x.png")
    elif kind == "link-to-dev-zero":
        os.symlink("/dev/zero", tmp_path / "x.png")
    assert reject_reason(tmp_path, target) == "error:image_not_a_file"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("nope.png", "error:image_missing"),
        ("a.png/inner.png", "error:image_unreadable"),
        ("a\x00b", "error:nul_byte"),
    ],
    ids=["missing", "under-a-file", "nul"],
)
def test_local_image_path_problems_are_rejects(tmp_path, path, reason):
    (tmp_path / "a.png").write_bytes(b"x")
    assert reject_reason(tmp_path, path) == reason


def test_local_image_relative_path_is_resolved_against_the_corpus_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"here")
    assert load_local_image(str(tmp_path / "sub"), "a.png", 100) == b"here"


# --- shards capped by bytes as well as rows ------------------------------------------------------------


@given(sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=40), group=st.integers(1, 12),
       shard_rows=st.integers(1, 50), cap=st.integers(1, 20_000))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_parquet_shards_stop_at_rows_or_bytes_and_cover_every_row_once(tmp_path, sizes, group, shard_rows, cap):
    path = tmp_path / "c.parquet"
    table = pa.table({"text": [f"t{i}" for i in range(len(sizes))], "image": [b"x" * n for n in sizes]})
    pq.write_table(table, path, row_group_size=group)
    specs = plan_corpus(str(path), COLS, shard_rows, cap)
    assert [(s.start, s.stop) for s in specs] == list(zip([0] + [s.stop for s in specs[:-1]], [s.stop for s in specs]))
    assert specs[-1].stop == len(sizes) and all(0 < s.rows <= shard_rows for s in specs)
    meta = pq.ParquetFile(path).metadata
    per_row = [meta.row_group(g).total_byte_size / meta.row_group(g).num_rows
               for g in range(meta.num_row_groups) for _ in range(meta.row_group(g).num_rows)]
    for s in specs:
        # Under the cap, except by its last row (a shard ends once it reaches the cap).
        assert sum(per_row[s.start : s.stop - 1]) < cap
        assert [r["text"] for r in read_parquet_corpus_shard(s, None).to_pylist()] == [
            f"t{i}" for i in range(s.start, s.stop)]


# The lines are 37 bytes with their newline (a, b, c), 36 (d); the blank ones 1 and 4. A shard starts at its
# first record (blank lines before it are not counted) and ends on the line that reaches the cap.
@pytest.mark.parametrize(("cap", "rows"), [(1, [1, 1, 1, 1]), (38, [1, 1, 2]), (40, [2, 2]), (10_000, [4])])
def test_jsonl_shards_stop_once_they_reach_the_byte_cap(jsonl, cap, rows):
    specs = plan_corpus(str(jsonl), COLS, 100, cap)
    assert [s.rows for s in specs] == rows
    raws = [r for t in read_all(specs) for r in t["_raw"].to_pylist()]
    assert raws == [line.encode() for line in LINES if line.strip()]


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_local_image_whose_read_fails_is_retried_then_fails_the_shard_not_the_row(monkeypatch):
    from pipeline.io import images

    # /proc/self/mem is a regular file whose read at offset 0 fails with EIO: a real failing read.
    monkeypatch.setattr(images, "READ_RETRY", images.ReadRetry(attempts=2, base_wait_s=0.0, max_wait_s=0.0))
    with pytest.raises(images.ImageReadError, match="failed 2 times"):
        load_local_image("/", "/proc/self/mem", 1000)
