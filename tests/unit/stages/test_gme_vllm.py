"""pipeline/stages/gme_pool.py and the `gme.backend: vllm` side of the gme_score / negatives actors: the
vectors arrive in temporary columns (as vllm_embed leaves them, renamed) and the actors score from them
exactly as from a GmeEmbedder, turn a null image or an engine reason into the row's reason, and drop the
temporary columns. No Ray, no vLLM: the columns are written here as the engine pass would."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import to_dict
from pipeline.io.image_store import IMAGE_REF
from pipeline.models.gme import GmeConfig
from pipeline.models.llm_config import LLMConfig
from pipeline.stage import REASON, SHARD, SRC, STATUS
from pipeline.stages import gme_pool
from pipeline.stages.gme_score import GmeScore, GmeScoreConfig, GmeScoreFn
from tests.support.gme import png, put_image, scored

DIM = 5
VLLM = GmeConfig(backend="vllm", vllm=LLMConfig(backend="vllm", vllm_device="cpu", gpu_memory_utilization=0.05))


def _vec(values) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def table(run_uri: str, queries: list, positives: list, refs: list | None = None) -> pa.Table:
    """Rows as after the two engine passes: (vector, reason) per query and per positive."""
    n = len(queries)
    refs = refs if refs is not None else [put_image(run_uri)] * n
    return pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "doc_id": [f"d{i}" for i in range(n)],
            "text": ["passage"] * n,
            "title": pa.array([None] * n, pa.string()),
            "image": pa.array([None] * n, IMAGE_REF),
            "rewritten_query": ["Q"] * n,
            "query_image": pa.array(refs, IMAGE_REF),
            gme_pool.QUERY[0]: pa.array([_vec(v) for v, _ in queries], pa.list_(pa.float32())),
            gme_pool.QUERY[1]: [r for _, r in queries],
            gme_pool.POSITIVE[0]: pa.array([_vec(v) for v, _ in positives], pa.list_(pa.float32())),
            gme_pool.POSITIVE[1]: [r for _, r in positives],
            SHARD: ["000000"] * n,
            SRC: list(range(n)),
        }
    )


def actor(run_uri: str, monkeypatch, **kw) -> GmeScoreFn:
    def no_transformers(*_args):
        raise AssertionError("backend vllm must not load a GmeEmbedder")

    monkeypatch.setattr(gme_pool, "load_embedder", no_transformers)
    return GmeScoreFn("unused", to_dict(GmeScoreConfig(gme=VLLM, **kw)), run_uri, "Find it.", None)


def test_scores_come_from_the_engine_vectors_and_the_temporary_columns_are_dropped(tmp_path, monkeypatch):
    run_uri = str(tmp_path / "run")
    q = scored(1.0, 1, DIM)
    rows = table(run_uri, [(q, ""), (q, "")], [(scored(0.9, 2, DIM), ""), (scored(0.2, 3, DIM), "")])
    out = actor(run_uri, monkeypatch, threshold=0.3)(rows)
    assert out["gme_pos_score"].to_pylist() == pytest.approx([0.9, 0.2], abs=1e-6)
    assert (out[STATUS].to_pylist(), out[REASON].to_pylist()) == (["ok", "filtered"], ["", "filter:gme_score"])
    assert not {c for c in out.column_names if c.startswith("_gme")}


def test_a_null_query_image_an_image_reason_and_an_engine_failure_are_the_row_reasons(tmp_path, monkeypatch):
    run_uri = str(tmp_path / "run")
    q, p = scored(1.0, 1, DIM), scored(0.9, 2, DIM)
    rows = table(
        run_uri,
        # A null image: vllm_embed embeds the text alone, which GME must not score as a fused query.
        [(q, ""), (None, "error:image_too_small"), (None, "error:inference_failed"), (q, "")],
        [(p, ""), (p, ""), (p, ""), (None, "error:inference_failed")],
        refs=[None, put_image(run_uri), put_image(run_uri), put_image(run_uri)],
    )
    out = actor(run_uri, monkeypatch)(rows)
    assert out[REASON].to_pylist() == [
        "error:no_query_image",
        "error:image_too_small",
        "error:inference_failed",
        "error:inference_failed",
    ]
    assert out["gme_pos_score"].to_pylist() == [None] * 4


def test_the_vllm_backend_gets_a_pool_of_its_own_and_names_itself_in_the_manifest():
    def key(gme: GmeConfig) -> str:
        spec = gme_pool.pool_spec("s", gme, "p", "m", True, "flat", 0, gme_pool.Resources(), None)
        return spec.key("ingest-fp")

    base = GmeConfig()
    assert key(base) != key(VLLM)
    # Engine settings that do not change a vector do not change the pool.
    assert key(VLLM) == key(GmeConfig(backend="vllm", vllm=LLMConfig(
        backend="vllm", vllm_device="cpu", gpu_memory_utilization=0.1, max_model_len=4096
    )))
    stage = GmeScore.__new__(GmeScore)
    stage.config, stage.model_id = GmeScoreConfig(gme=VLLM), "tiny:gme@abc"
    assert stage.models() == {"gme": "tiny:gme@abc via vllm"}


def test_pool_rows_keep_the_image_used_and_the_engine_vectors(tmp_path):
    run_uri = str(tmp_path / "run")
    ref = put_image(run_uri)
    v = scored(0.5, 1, DIM)
    rows = pa.table(
        {
            "id": ["a", "b"], "doc_id": ["a", "b"], "title": ["A", None], "text": ["one", "two"],
            "image": pa.array([ref, ref], IMAGE_REF), "content_hash": ["h1", "h2"],
            "_gme_image": pa.array([ref, None], IMAGE_REF),
            gme_pool.POSITIVE[0]: pa.array([v, v], pa.list_(pa.float32())),
            gme_pool.POSITIVE[1]: ["", ""],
            SHARD: ["000000"] * 2, SRC: [0, 1],
        }
    )
    out = gme_pool.pool_table(rows)
    assert out.column_names[: len(gme_pool.POOL_SCHEMA)] == gme_pool.POOL_SCHEMA.names
    assert out["image_used"].to_pylist() == [True, False]
    assert np.allclose(np.array(out["embedding"].to_pylist()), [v, v])


def test_a_pool_row_the_engine_failed_on_fails_the_shard(tmp_path):
    rows = pa.table(
        {
            "id": ["a"], "doc_id": ["a"], "title": ["A"], "text": ["one"], "image": pa.array([None], IMAGE_REF),
            "content_hash": ["h1"], gme_pool.POSITIVE[0]: pa.array([None], pa.list_(pa.float32())),
            gme_pool.POSITIVE[1]: ["error:inference_failed"], SHARD: ["000000"], SRC: [0],
        }
    )
    with pytest.raises(RuntimeError, match="'a': error:inference_failed; the shard is not committed"):
        gme_pool.pool_table(rows)


def test_passage_images_gme_cannot_take_are_left_out_so_the_passage_is_embedded_as_text(tmp_path):
    run_uri = str(tmp_path / "run")
    good, thin = put_image(run_uri), put_image(run_uri, png((600, 2)), size=(600, 2))
    rows = pa.table({"image": pa.array([good, thin, None], IMAGE_REF)})
    out = gme_pool.usable_image(rows, run_uri, GmeConfig(), "image")
    assert out["_gme_image"].to_pylist() == [good, None, None]


def test_store_image_bytes_reads_the_run_store_and_pickles_without_its_handle(tmp_path):
    import pickle

    run_uri = str(tmp_path / "run")
    data = png()
    ref = put_image(run_uri, data)
    loader = gme_pool.StoreImageBytes(run_uri)
    assert (loader(ref), loader(None)) == (data, None)
    assert pickle.loads(pickle.dumps(loader))(ref) == data
