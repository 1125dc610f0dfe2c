"""pipeline/io/indexes.py: per-row metadata kept beside the vectors (rows.arrow) and read by pool row."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.io.fs import RunFS
from pipeline.io.indexes import ROWS, IndexHandle, embedding_array, finish_index

IDS = [f"p{i}" for i in range(7)]


def write_parts(uri: str, extra: bool, sizes=(3, 0, 4)) -> list[str]:
    """Embedding parts as an embed side stage writes them (an empty part included)."""
    run_fs = RunFS.from_uri(uri)
    vectors = np.eye(7, dtype=np.float32)
    parts, start = [], 0
    for k, size in enumerate(sizes):
        cols = {"id": IDS[start : start + size], "embedding": embedding_array(vectors[start : start + size])}
        if extra:
            cols["text"] = [f"text of {i}" for i in IDS[start : start + size]]
            cols["n"] = pa.array(range(start, start + size), pa.int32())
        rel = f"pool-x/part-{k:06d}.parquet"
        run_fs.write_parquet(rel, pa.table(cols))
        parts.append(rel)
        start += size
    return parts


def finished(tmp_path, extra: bool):
    uri = str(tmp_path / "_index")
    done = finish_index(uri, "pool-x", write_parts(uri, extra), "flat", 0)
    return IndexHandle(uri, "pool-x", done["count"], done["dim"], done["kind"]).open(), done


def test_metadata_rows_come_back_in_the_order_asked_across_parts(tmp_path):
    index, done = finished(tmp_path, extra=True)
    got = index.rows_at([6, 0, 3, 0], ["id", "n"])
    assert got.to_pylist() == [
        {"id": "p6", "n": 6},
        {"id": "p0", "n": 0},
        {"id": "p3", "n": 3},
        {"id": "p0", "n": 0},
    ]
    assert done["meta"] == ["id", "text", "n"] and index.meta_columns == ("id", "text", "n")


def test_metadata_rows_match_the_faiss_rows(tmp_path):
    index, _ = finished(tmp_path, extra=True)
    _, hits = index.search(np.eye(7, dtype=np.float32)[[5]], 1)
    assert index.rows_at(hits[0], ["text"]).column("text").to_pylist() == ["text of p5"]


def test_no_rows_asked_is_an_empty_table_with_the_columns(tmp_path):
    index, _ = finished(tmp_path, extra=True)
    assert index.rows_at([], ["text"]).schema.names == ["text"]


def test_a_row_outside_the_pool_is_an_index_error(tmp_path):
    index, _ = finished(tmp_path, extra=True)
    with pytest.raises(IndexError):
        index.rows_at([7])


def test_an_id_and_embedding_pool_writes_no_metadata_file(tmp_path):
    index, done = finished(tmp_path, extra=False)
    assert not os.path.exists(tmp_path / "_index" / "pool-x" / ROWS)
    assert (done["meta"], index.meta_columns, index.ids.to_pylist()) == ([], (), IDS)
    with pytest.raises(KeyError):
        index.rows_at([0])


def test_an_index_on_a_remote_filesystem_is_copied_to_the_nodes_cache_once(tmp_path):
    """A run dir that is not a local path (here a SubTreeFileSystem, as s3:// would be) gets its index
    folder streamed into the node's cache, byte for byte, and a second open reuses the copy."""
    from pathlib import Path

    import pyarrow.fs as pafs

    from pipeline.io.indexes import DONE, _local_copy

    folder = tmp_path / "remote" / "run" / "_index" / "gme-abc"
    folder.mkdir(parents=True)
    payload = {"index.faiss": os.urandom(3 * 2**20 + 7), "ids.parquet": b"ids", ROWS: b"rows", DONE: b"{}"}
    for name, data in payload.items():
        (folder / name).write_bytes(data)
    run_fs = RunFS(pafs.SubTreeFileSystem(str(tmp_path / "remote"), pafs.LocalFileSystem()), "run/_index")
    local = _local_copy(run_fs, "gme-abc", str(tmp_path / "cache"))
    assert local.startswith(str(tmp_path / "cache"))
    assert {name: Path(local, name).read_bytes() for name in payload} == payload
    (folder / "index.faiss").write_bytes(b"changed remotely")
    assert _local_copy(run_fs, "gme-abc", str(tmp_path / "cache")) == local
    assert Path(local, "index.faiss").read_bytes() == payload["index.faiss"]


def test_ids_are_looked_up_through_the_memory_mapped_files(tmp_path):
    index, _ = finished(tmp_path, extra=False)
    assert isinstance(index._lookup, np.memmap)
    assert index.rows_of(["p6", "p0", "nope", None, "p3", "p6"]) == [6, 0, None, None, 3, 6]
    assert index.rows_of([]) == []


def test_an_index_folder_without_the_lookup_files_still_looks_ids_up(tmp_path):
    """A folder an earlier fusegen wrote (ids.parquet only) builds its lookup on open."""
    from pipeline.io.indexes import IDS as IDS_FILE
    from pipeline.io.indexes import LOOKUP

    _, done = finished(tmp_path, extra=False)
    for name in (IDS_FILE, LOOKUP):
        os.remove(tmp_path / "_index" / "pool-x" / name)
    reopened = IndexHandle(str(tmp_path / "_index"), "pool-x", done["count"], done["dim"], done["kind"]).open()
    assert reopened.rows_of(IDS[::-1]) == list(range(7))[::-1]


@given(ids=st.lists(st.text(max_size=6), max_size=40), probes=st.lists(st.text(max_size=6), max_size=20))
@settings(max_examples=60, deadline=None)
def test_rows_of_answers_what_a_dict_of_every_id_would(ids, probes):
    """The last row of a repeated id, None for an absent one, for any unicode ids."""
    from pipeline.io.indexes import OpenIndex, id_lookup

    index = object.__new__(OpenIndex)
    index.ids, index._lookup = pa.array(ids, pa.string()), id_lookup(ids)
    as_dict = {doc_id: i for i, doc_id in enumerate(ids)}
    asked = probes + ids
    assert OpenIndex.rows_of(index, asked) == [as_dict.get(p) for p in asked]
