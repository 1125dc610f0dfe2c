"""pipeline/stages/negatives.py: the mining rules (hand-built and property-tested), the decisions, and
the actor on a GME pool built by the real pool side stage with a fake embedder."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import to_dict
from pipeline.errors import PipelineConfigError
from pipeline.io.image_store import IMAGE_REF
from pipeline.io.index_config import IndexConfig
from pipeline.stage import REASON, SHARD, SRC, STATUS
from pipeline.stages import gme_pool
from pipeline.stages.negatives import NegativesConfig, NegativesFn, PoolKeys, decide, mine
from tests.support.gme import GME_SIZE, FakeGme, build_pool, put_image, scored
from tests.support.indexes import record_nprobe

POSITIVE = PoolKeys("pos", "pos", ("c-pos", "t-pos"), "src-pos")


def keys(name: str, hashes: tuple[str, ...] = (), source: str | None = None) -> PoolKeys:
    return PoolKeys(name, name, hashes or (f"c-{name}", f"t-{name}"), source)


def cfg(**kw) -> NegativesConfig:
    kw.setdefault("relative_margin", None)
    return NegativesConfig(**kw)


# ---- mine: a hand-built pool where the right negatives are known ----------------------------------

# The positive scores 0.90. Above the guard: itself, an exact duplicate (shares its text hash), a near
# duplicate (0.88, a different text: only the margin catches it) and a passage of the same source.
HITS = [
    (POSITIVE, 0.90),
    (keys("dup", ("x", "t-pos")), 0.89),
    (keys("near"), 0.88),
    (keys("sibling", source="src-pos"), 0.86),
    (keys("tower"), 0.70),
    (keys("river"), 0.60),
    (keys("whale"), 0.30),
]


def run_mine(config: NegativesConfig, pos_score: float = 0.90, hits=HITS):
    chosen, skipped = mine([h for h, _ in hits], [s for _, s in hits], POSITIVE, pos_score, config)
    return [hits[c][0].id for c in chosen], skipped


def test_mine_skips_positive_duplicate_near_duplicate_and_sibling():
    chosen, skipped = run_mine(cfg(num_negatives=2, margin=0.05))
    assert chosen == ["tower", "river"]
    assert skipped == {"positive": 1, "duplicate": 1, "margin": 1, "same_source": 1}


def test_mine_without_a_margin_takes_the_near_duplicate():
    assert run_mine(cfg(num_negatives=2))[0] == ["near", "tower"]


def test_mine_relative_margin_is_a_share_of_the_positive_score():
    # 0.90 * (1 - 0.05) = 0.855: the near duplicate (0.88) goes, the tower (0.70) stays.
    chosen, skipped = run_mine(cfg(num_negatives=1, relative_margin=0.05))
    assert (chosen, skipped["relative_margin"]) == (["tower"], 1)


def test_mine_relative_margin_stays_below_a_negative_positive_score():
    hits = [(keys("a"), -0.18), (keys("b"), -0.25)]
    assert run_mine(cfg(relative_margin=0.1), pos_score=-0.2, hits=hits)[0] == ["b"]


def test_mine_same_source_is_kept_when_the_exclusion_is_off():
    assert "sibling" in run_mine(cfg(num_negatives=3, exclude_same_source=False))[0]


def test_mine_max_score_is_an_absolute_ceiling():
    assert run_mine(cfg(num_negatives=2, max_score=0.65))[0] == ["river", "whale"]


def test_mine_min_score_drops_unrelated_passages():
    assert run_mine(cfg(num_negatives=8, margin=0.05, min_score=0.5))[0] == ["tower", "river"]


def test_mine_rank_window_counts_every_hit_including_the_positive():
    # Ranks: pos 1, dup 2, near 3, sibling 4, tower 5, river 6, whale 7.
    assert run_mine(cfg(num_negatives=8, range_min=5, range_max=6))[0] == ["river"]


def test_mine_a_small_pool_gives_fewer_negatives():
    assert run_mine(cfg(num_negatives=8, margin=0.05))[0] == ["tower", "river", "whale"]


def test_mine_orders_by_score_whatever_the_input_order():
    shuffled = [HITS[5], HITS[4], HITS[6]]
    chosen, _ = mine([h for h, _ in shuffled], [s for _, s in shuffled], POSITIVE, 0.9, cfg(num_negatives=3))
    assert chosen == [1, 0, 2]


# ---- mine: properties over random pools with planted duplicates ------------------------------------

KINDS = ("plain", "plain", "plain", "exact_dup", "loose_dup", "near_dup", "same_source")


@st.composite
def pools(draw):
    pos_score = draw(st.floats(-1, 1, allow_nan=False))
    planted = []
    for i, kind in enumerate(draw(st.lists(st.sampled_from(KINDS), max_size=30))):
        score = draw(st.floats(-1, 1, allow_nan=False))
        hashes, source = (f"c{i}", f"t{i}"), draw(st.sampled_from([None, f"s{i}"]))
        if kind == "exact_dup":
            hashes = ("c-pos", f"t{i}")
        elif kind == "loose_dup":
            hashes = (f"c{i}", "t-pos")
        elif kind == "near_dup":
            score = min(1.0, max(-1.0, pos_score + draw(st.floats(-0.02, 0.02))))
        elif kind == "same_source":
            source = "src-pos"
        planted.append((PoolKeys(f"p{i}", f"p{i}", hashes, source), score))
    if draw(st.booleans()):
        planted.append((POSITIVE, pos_score))
    # faiss returns hits best first
    planted.sort(key=lambda h: -h[1])
    return planted, pos_score


@st.composite
def configs(draw):
    range_min = draw(st.integers(0, 4))
    search_k = draw(st.integers(range_min + 1, 40))
    return cfg(
        num_negatives=draw(st.integers(1, 8)),
        min_negatives=0,
        search_k=search_k,
        range_min=range_min,
        range_max=draw(st.sampled_from([0, search_k]) | st.integers(range_min + 1, search_k)),
        margin=draw(st.none() | st.floats(0, 0.3)),
        relative_margin=draw(st.none() | st.floats(0, 0.3)),
        max_score=draw(st.none() | st.floats(-1, 1)),
        min_score=draw(st.none() | st.floats(-1, 1)),
        exclude_same_source=draw(st.booleans()),
    )


def allowed(hit: PoolKeys, score: float, rank: int, pos_score: float, c: NegativesConfig) -> bool:
    """The rules restated from the config's documentation."""
    return (
        hit.id != POSITIVE.id
        and not set(hit.hashes) & set(POSITIVE.hashes)
        and not (c.exclude_same_source and hit.source == POSITIVE.source)
        and c.range_min < rank <= (c.range_max or c.search_k)
        and (c.margin is None or score <= pos_score - c.margin)
        and (c.relative_margin is None or score <= pos_score - abs(pos_score) * c.relative_margin)
        and (c.max_score is None or score <= c.max_score)
        and (c.min_score is None or score >= c.min_score)
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=pools(), c=configs())
def test_mined_negatives_obey_every_rule_and_are_the_best_allowed(pool, c):
    planted, pos_score = pool
    hits, scores = [h for h, _ in planted], [s for _, s in planted]
    chosen, _ = mine(hits, scores, POSITIVE, pos_score, c)
    ok = [p for p in range(len(hits)) if allowed(hits[p], scores[p], p + 1, pos_score, c)]
    assert len(chosen) <= c.num_negatives and len(set(chosen)) == len(chosen)
    assert all(p in ok for p in chosen), "a chosen hit breaks a rule"
    picked = [scores[p] for p in chosen]
    assert picked == sorted(picked, reverse=True)
    assert len(chosen) == min(c.num_negatives, len(ok)), "an allowed hit was left out while room remained"
    left_out = [scores[p] for p in ok if p not in chosen]
    assert not picked or not left_out or min(picked) >= max(left_out), "a better allowed hit was passed over"


# ---- decide and config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("q", "", True, 3, 1), ("ok", "")),
        (("q", "", True, 0, 0), ("ok", "")),
        (("q", "", True, 1, 2), ("filtered", "filter:too_few_negatives")),
        (("q", "", False, 0, 1), ("rejected", "error:source_not_in_pool")),
        (("q", "error:no_query_image", True, 0, 1), ("rejected", "error:no_query_image")),
        ((" ", "", True, 0, 1), ("filtered", "filter:empty_query")),
    ],
)
def test_decide(args, expected):
    assert decide(*args) == expected


@pytest.mark.parametrize(
    "bad",
    [
        {"num_negatives": 0},
        {"min_negatives": 9},
        {"range_min": 64},
        {"range_max": 65},
        {"range_min": 3, "range_max": 3},
        {"margin": -0.1},
        {"relative_margin": 1.0},
    ],
)
def test_bad_mining_settings_are_config_errors(bad):
    with pytest.raises(PipelineConfigError):
        NegativesConfig(**bad)


def test_config_loads_from_yaml_values():
    built = NegativesConfig.from_dict(
        {"num_negatives": 4, "margin": 0.1, "gme": {"model": "x"}, "source_key": "title"}
    )
    assert (built.num_negatives, built.margin, built.gme.model, built.source_key) == (4, 0.1, "x", "title")


# ---- the actor on a real pool index -----------------------------------------------------------------

# Cosine with the query ("Q", vector e0) is exactly the number given.
PASSAGES = [
    ("bridge", "The Golden Gate Bridge spans the strait.", "Golden Gate Bridge", 0.90, True),
    ("bridge-copy", "the golden gate bridge spans the strait", "Copy", 0.89, False),
    ("near", "A paraphrase of the bridge passage.", None, 0.88, False),
    ("tower", "Coit Tower stands on Telegraph Hill.", "Golden Gate Bridge", 0.80, True),
    ("river", "The Sacramento River drains the valley.", "Sacramento River", 0.60, False),
    ("whale", "Blue whales feed on krill.", "Blue whale", 0.30, True),
    ("panda", "Giant pandas eat bamboo.", "Giant panda", 0.10, False),
]
SCORE = {doc: s for doc, _, _, s, _ in PASSAGES}


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A run dir with images, the fake GME, and the GME pool index built from PASSAGES."""
    run_uri = str(tmp_path / "run")
    vectors = {"Q": scored(1.0, 1, dim=len(PASSAGES) + 2), "Q-other": scored(0.0, 1, dim=len(PASSAGES) + 2)}
    passages = []
    for k, (doc, text, title, s, has_image) in enumerate(PASSAGES):
        vectors[text] = scored(s, k + 2, dim=len(PASSAGES) + 2)
        image = put_image(run_uri, size=(40 + k, 40)) if has_image else None
        passages.append({"doc_id": doc, "text": text, "title": title, "image": image})
    fake = FakeGme(vectors)
    monkeypatch.setattr(gme_pool, "load_embedder", lambda path, gme_cfg: fake)
    embed = gme_pool.GmePoolEmbedFn("unused", to_dict(gme_pool.GmePoolConfig()), run_uri)
    index = build_pool(f"{run_uri}/_index", embed, passages)
    return run_uri, index, fake


def actor(world, **kw) -> NegativesFn:
    run_uri, index, _ = world
    kw.setdefault("num_negatives", 3)
    return NegativesFn("unused", to_dict(NegativesConfig(**kw)), run_uri, "Find the passage.", index)


def queries(world, doc_ids: list[str], images: list | None = None, texts: list | None = None) -> pa.Table:
    run_uri = world[0]
    n = len(doc_ids)
    images = images if images is not None else [put_image(run_uri)] * n
    return pa.table(
        {
            "id": [f"{d}-q{i}" for i, d in enumerate(doc_ids)],
            "doc_id": doc_ids,
            "rewritten_query": texts or ["Q"] * n,
            "query_image": pa.array(images, IMAGE_REF),
            SHARD: ["000000"] * n,
            SRC: list(range(n)),
        }
    )


def row(out: pa.Table, i: int = 0) -> dict:
    return out.slice(i, 1).to_pylist()[0]


def test_actor_mines_the_known_negatives_with_ranks_and_scores(world):
    got = row(actor(world)(queries(world, ["bridge"])))
    assert got["neg_ids"] == ["tower", "river", "whale"]
    assert got["neg_ranks"] == [4, 5, 6]
    assert got["neg_scores"] == pytest.approx([0.80, 0.60, 0.30], abs=1e-5)
    assert (got["num_negatives"], got[STATUS]) == (3, "ok")


def test_actor_searches_the_pool_with_the_configured_nprobe(world, monkeypatch):
    fn = actor(world, index=IndexConfig(nprobe=9))
    seen = record_nprobe(fn.pool, monkeypatch)
    fn(queries(world, ["bridge"]))
    assert seen == [9]


def test_actor_attaches_texts_titles_doc_ids_and_images_of_the_negatives(world):
    got = row(actor(world)(queries(world, ["bridge"])))
    by_doc = {doc: (text, title) for doc, text, title, _, _ in PASSAGES}
    assert list(zip(got["neg_texts"], got["neg_titles"])) == [by_doc[d] for d in got["neg_doc_ids"]]
    assert [img is not None for img in got["neg_images"]] == [True, False, True]
    assert got["neg_images"][0]["width"] == 43  # the tower's own image (40 + its position 3)


def test_actor_recomputes_the_positive_score_with_its_own_model(world):
    got = row(actor(world)(queries(world, ["bridge"])))
    assert got["neg_pos_score"] == pytest.approx(SCORE["bridge"], abs=1e-5)


def test_actor_same_title_counts_as_same_source(world):
    got = row(actor(world, source_key="title")(queries(world, ["bridge"])))
    assert got["neg_ids"] == ["river", "whale", "panda"]


def test_actor_without_guards_keeps_the_near_duplicate_but_never_the_text_duplicate(world):
    got = row(actor(world, relative_margin=None)(queries(world, ["bridge"])))
    assert got["neg_ids"] == ["near", "tower", "river"]


def test_actor_pool_smaller_than_k_gives_fewer_negatives(world):
    got = row(actor(world, num_negatives=8)(queries(world, ["bridge"])))
    assert (got["neg_ids"], got["num_negatives"], got[STATUS]) == (
        ["tower", "river", "whale", "panda"],
        4,
        "ok",
    )


def test_actor_filters_rows_with_too_few_negatives_and_keeps_what_it_found(world):
    got = row(actor(world, num_negatives=8, min_negatives=5)(queries(world, ["bridge"])))
    assert (got[REASON], got["num_negatives"]) == ("filter:too_few_negatives", 4)


def test_actor_rejects_query_image_and_pool_errors(world):
    run_uri = world[0]
    images = [None, put_image(run_uri, b"not an image"), put_image(run_uri)]
    out = actor(world)(queries(world, ["bridge", "bridge", "no-such-doc"], images))
    assert out[REASON].to_pylist() == [
        "error:no_query_image",
        "error:image_not_an_image",
        "error:source_not_in_pool",
    ]
    assert out["num_negatives"].to_pylist() == [0, 0, 0]


def test_actor_encodes_the_fused_query_with_instruction_and_image(world):
    fake = world[2]
    fake.seen.clear()
    actor(world)(queries(world, ["bridge"]))
    (query,) = fake.seen
    assert (query.text, query.instruction, query.image.size) == ("Q", "Find the passage.", GME_SIZE)


def test_actor_keeps_every_input_column_and_row_order(world):
    table = queries(world, ["river", "bridge"]).append_column("entity", pa.array(["e1", "e2"]))
    out = actor(world)(table)
    assert set(table.column_names) < set(out.column_names)
    assert out["id"].to_pylist() == table["id"].to_pylist()


def test_actor_skips_the_empty_slots_of_an_ivf_search(tmp_path, monkeypatch):
    from pipeline.io.fs import RunFS
    from pipeline.io.indexes import IndexHandle, embedding_array, finish_index

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4000, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(4000)]
    uri = str(tmp_path / "run" / "_index")
    RunFS.from_uri(uri).write_parquet(
        "gme-x/part-000000.parquet",
        pa.table(
            {
                "id": ids,
                "doc_id": ids,
                "title": [None] * 4000,
                "text": ids,
                "image": pa.nulls(4000, IMAGE_REF),
                "content_hash": ids,
                "text_hash": ids,
                "embedding": embedding_array(vectors),
            }
        ),
    )
    done = finish_index(uri, "gme-x", ["gme-x/part-000000.parquet"], "ivf", 16)
    assert done["kind"] == "ivf"
    index = IndexHandle(uri, "gme-x", done["count"], done["dim"], done["kind"])
    monkeypatch.setattr(gme_pool, "load_embedder", lambda path, gme_cfg: FakeGme({"Q": vectors[0].tolist()}))
    # One probed list holds ~250 vectors: most of the 1000 slots asked for come back empty (-1).
    index_cfg = IndexConfig("ivf", nlist=16, nprobe=1)
    config = NegativesConfig(search_k=1000, relative_margin=None, index=index_cfg)
    fn = NegativesFn("unused", to_dict(config), str(tmp_path / "run"), "Find.", index)
    got = row(fn(queries((str(tmp_path / "run"), index, None), ["d0"])))
    assert got["num_negatives"] == 8 and "d0" not in got["neg_ids"]
    assert got["neg_ranks"] == list(range(2, 10))
