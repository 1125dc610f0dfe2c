"""pipeline/io/fs.py: RunFS on a local tmp dir; every write is atomic (temp name, then rename)."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from pipeline.io.fs import RunFS, row_bytes, row_group_sizes


@pytest.fixture
def run_fs(tmp_path) -> RunFS:
    return RunFS.from_uri(str(tmp_path / "run"))


def files_under(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names)


def test_from_uri_makes_a_relative_path_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert RunFS.from_uri("runs/x/").root == str(tmp_path / "runs" / "x")


def test_write_bytes_creates_parent_folders_and_reads_back(run_fs):
    run_fs.write_bytes("a/b/c.bin", b"\x00\x01payload")
    assert run_fs.read_bytes("a/b/c.bin") == b"\x00\x01payload"


def test_write_leaves_no_temp_file_behind(run_fs):
    run_fs.write_bytes("a/x.bin", b"1")
    run_fs.write_json("a/x.json", {"k": 1})
    run_fs.write_parquet("a/x.parquet", pa.table({"v": [1]}))
    assert files_under(run_fs.root) == ["a/x.bin", "a/x.json", "a/x.parquet"]


def test_write_replaces_an_existing_file(run_fs):
    run_fs.write_bytes("f.txt", b"old contents, longer")
    run_fs.write_bytes("f.txt", b"new")
    assert run_fs.read_bytes("f.txt") == b"new"


def test_failed_write_keeps_the_previous_file(run_fs):
    run_fs.write_parquet("p.parquet", pa.table({"v": [1, 2]}))
    # Parquet cannot store interval types: the writer fails.
    bad = pa.table({"v": pa.array([(1, 2, 3)], pa.month_day_nano_interval())})
    with pytest.raises(pa.ArrowNotImplementedError):
        run_fs.write_parquet("p.parquet", bad)
    assert run_fs.read_parquet("p.parquet")["v"].to_pylist() == [1, 2]


def test_write_failing_half_way_never_shows_a_partial_file(run_fs):
    def half_then_fail(tmp: str) -> None:
        with run_fs.fs.open_output_stream(tmp) as out:
            out.write(b"half of the ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run_fs._atomic("out/data.bin", half_then_fail)
    assert (run_fs.exists("out/data.bin"), run_fs.listdir("out")) == (False, [])


def test_write_json_round_trips(run_fs):
    obj = {"stage": "ingest", "rows": {"in": 3}, "reasons": {"error:x": 1}}
    run_fs.write_json("m/_manifest.json", obj)
    assert run_fs.read_json("m/_manifest.json") == obj


def test_read_json_of_a_missing_file_is_none(run_fs):
    assert run_fs.read_json("nope.json") is None


def test_write_parquet_round_trips_and_counts_rows(run_fs):
    run_fs.write_parquet("parts/part-000000.parquet", pa.table({"id": ["a", "b", "c"]}))
    assert (
        run_fs.parquet_rows("parts/part-000000.parquet"),
        run_fs.read_parquet("parts/part-000000.parquet")["id"].to_pylist(),
    ) == (
        3,
        ["a", "b", "c"],
    )


def test_listdir_is_sorted_filtered_by_suffix_and_skips_hidden_files(run_fs):
    for name in ("b.parquet", "a.parquet", "c.json", ".a.parquet.1234.tmp"):
        run_fs.write_bytes(f"d/{name}", b"x")
    run_fs.mkdir("d/subdir.parquet")
    assert run_fs.listdir("d", ".parquet") == ["a.parquet", "b.parquet"]


def test_listdir_of_a_missing_folder_is_empty(run_fs):
    assert run_fs.listdir("missing") == []


def test_delete_dir_removes_the_folder_and_tolerates_absence(run_fs):
    run_fs.write_bytes("stage/x", b"1")
    run_fs.delete_dir("stage")
    run_fs.delete_dir("stage")
    assert not run_fs.exists("stage")


IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def image_rows() -> pa.Table:
    """Row payloads: 10+1 bytes, 0 (nulls), 30+60+2 bytes (a list of two images)."""
    return pa.table({
        "image": pa.array([{"bytes": b"x" * 10, "path": "a"}, None, None], IMAGE),
        "negs": pa.array([[], None, [{"bytes": b"y" * 30, "path": "b"}, {"bytes": b"z" * 60, "path": "c"}]],
                         pa.list_(IMAGE)),
    })


def test_row_bytes_counts_binary_payload_through_structs_and_lists():
    table = image_rows()
    sizes = [int(row_bytes(table["image"])[i] + row_bytes(table["negs"])[i]) for i in range(3)]
    assert sizes == [11, 0, 92]


def test_row_bytes_of_a_sliced_list_column_counts_only_its_own_rows():
    assert row_bytes(image_rows()["negs"].slice(2, 1)).tolist() == [92]


def test_row_group_sizes_keeps_every_group_under_the_cap_and_a_big_row_alone():
    table = pa.table({"b": pa.array([b"a" * 40, b"b" * 40, b"c" * 200, b"d" * 10, b"e" * 10], pa.binary())})
    assert row_group_sizes(table, 100) == [2, 1, 2]


def test_write_parquet_with_a_byte_cap_writes_the_computed_row_groups(run_fs):
    import pyarrow.parquet as pq

    table = pa.table({"b": pa.array([b"a" * 40] * 5, pa.binary())})
    run_fs.write_parquet("x.parquet", table, max_row_group_bytes=100)
    meta = pq.ParquetFile(run_fs.path("x.parquet")).metadata
    assert ([meta.row_group(i).num_rows for i in range(meta.num_row_groups)], meta.num_rows) == ([2, 2, 1], 5)


@pytest.mark.parametrize("cap", [None, 100])
def test_write_parquet_leaves_binary_leaves_uncompressed_and_zstds_the_rest(run_fs, cap):
    """Image bytes (binary leaves, in structs, lists of structs and maps) are written uncompressed;
    strings and numbers keep zstd. Checked on the file's own column chunks, so a path the writer does
    not recognise (and would silently compress) fails."""
    import pyarrow.parquet as pq

    table = image_rows().append_column("text", pa.array(["a", "b", "c"])).append_column(
        "tags", pa.array([{"k": b"v"}, None, {}], pa.map_(pa.string(), pa.binary())))
    run_fs.write_parquet("x.parquet", table, max_row_group_bytes=cap)
    meta = pq.ParquetFile(run_fs.path("x.parquet")).metadata
    chunks = [meta.row_group(0).column(i) for i in range(meta.num_columns)]
    got = {c.path_in_schema: c.compression for c in chunks}
    assert got == {
        "image.bytes": "UNCOMPRESSED", "image.path": "ZSTD",
        "negs.list.element.bytes": "UNCOMPRESSED", "negs.list.element.path": "ZSTD",
        "text": "ZSTD", "tags.key_value.key": "ZSTD", "tags.key_value.value": "UNCOMPRESSED",
    }
    assert run_fs.read_parquet("x.parquet").equals(table)
