"""finish_index builds its faiss index part by part (issue 19: peak memory the index plus one part);
these pin the streamed build to the slow truth, the index faiss builds from the whole matrix in memory."""

from __future__ import annotations

import faiss
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.io.fs import RunFS
from pipeline.io.indexes import (
    LOOKUP,
    IndexHandle,
    embedding_array,
    finish_index,
    id_lookup,
    ivf_lists,
)


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_parts(uri: str, matrix: np.ndarray, sizes: list[int]) -> tuple[list[str], list[str]]:
    run_fs = RunFS.from_uri(uri)
    parts, ids, start = [], [], 0
    for k, size in enumerate(sizes):
        part_ids = [f"doc-{start + i}" for i in range(size)]
        rel = f"pool-x/part-{k:06d}.parquet"
        run_fs.write_parquet(rel, pa.table({"id": pa.array(part_ids, pa.string()),
                                            "embedding": embedding_array(matrix[start:start + size])}))
        parts.append(rel)
        ids += part_ids
        start += size
    return parts, ids


def reference(matrix: np.ndarray, kind: str, nlist: int):
    """What faiss builds from the whole matrix in memory: the index before streaming."""
    n, dim = matrix.shape
    lists = ivf_lists(n, kind, nlist)
    if not lists:
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234
        index.train(matrix)
    index.add(matrix)
    return index


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=5), dim=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_a_flat_index_filled_in_place_is_the_index_faiss_builds_from_the_matrix(tmp_path_factory, sizes, dim, seed):
    uri = str(tmp_path_factory.mktemp("idx") / "_index")
    matrix = unit_rows(sum(sizes), dim, seed)
    parts, ids = write_parts(uri, matrix, sizes)
    done = finish_index(uri, "pool-x", parts, "flat", 0)
    assert done["count"] == len(ids) and done["kind"] == "flat"
    run_fs = RunFS.from_uri(uri)
    if not ids:
        assert not run_fs.exists("pool-x/index.faiss") and done["dim"] == 0
        return
    written = run_fs.read_bytes("pool-x/index.faiss")
    assert written == bytes(faiss.serialize_index(reference(matrix, "flat", 0)))
    assert run_fs.read_parquet("pool-x/ids.parquet")["id"].to_pylist() == ids
    assert np.array_equal(np.load(run_fs.path(f"pool-x/{LOOKUP}")), id_lookup(ids))


def test_an_ivf_index_added_part_by_part_is_the_index_faiss_builds_from_the_matrix(tmp_path):
    uri = str(tmp_path / "_index")
    matrix = unit_rows(900, 8, 7)
    parts, _ = write_parts(uri, matrix, [300, 0, 250, 350])
    done = finish_index(uri, "pool-x", parts, "ivf", 4)
    assert done["kind"] == "ivf" and done["count"] == 900
    run_fs = RunFS.from_uri(uri)
    assert run_fs.read_bytes("pool-x/index.faiss") == bytes(faiss.serialize_index(reference(matrix, "ivf", 4)))
    assert np.array_equal(np.load(run_fs.path("pool-x/vectors.npy")), matrix)
    opened = IndexHandle(uri, "pool-x", done["count"], done["dim"], done["kind"]).open()
    _, hits = opened.search(matrix[[5, 600]], 1)
    assert hits[:, 0].tolist() == [5, 600]


def test_ivf_over_more_points_than_kmeans_uses_trains_on_a_seeded_sample_and_rebuilds_the_same(tmp_path):
    # nlist 2 trains on at most 512 points; 1200 are sampled down, with a fixed seed.
    matrix = unit_rows(1200, 6, 3)
    built = []
    for name in ("a", "b"):
        uri = str(tmp_path / name)
        parts, _ = write_parts(uri, matrix, [500, 700])
        done = finish_index(uri, "pool-x", parts, "ivf", 2)
        assert done["kind"] == "ivf"
        built.append(RunFS.from_uri(uri).read_bytes("pool-x/index.faiss"))
    assert built[0] == built[1]
    index = faiss.deserialize_index(np.frombuffer(built[0], np.uint8))
    index.nprobe = 2  # every list: exact
    _, hits = index.search(matrix[[0, 1199]], 1)
    assert hits[:, 0].tolist() == [0, 1199]


def test_parts_that_hold_other_than_their_footer_says_fail_the_build(tmp_path):
    from pipeline.io.indexes import _flat_filled

    with pytest.raises(ValueError, match="declared 5"):
        _flat_filled(3, 5, [unit_rows(4, 3, 0)])
    with pytest.raises(ValueError, match="more than the 2"):
        _flat_filled(3, 2, [unit_rows(4, 3, 0)])
