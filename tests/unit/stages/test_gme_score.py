"""pipeline/stages/gme_score.py: decisions, the instruction file, and the actor with a fake GME, with and
without the pool rank check."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.config import to_dict
from pipeline.errors import PipelineConfigError
from pipeline.io.image_store import IMAGE_REF
from pipeline.io.index_config import IndexConfig
from pipeline.prompts import default_prompts_dir
from pipeline.stage import REASON, SHARD, SRC, STATUS
from pipeline.stages import gme_pool
from pipeline.stages.gme_score import GmeScore, GmeScoreConfig, GmeScoreFn, decide, load_instruction
from tests.support.gme import GME_SIZE, FakeGme, build_pool, put_image, scored
from tests.support.indexes import record_nprobe

# Query "Q" is e0; each passage's cosine with it is the number given.
PASSAGES = [
    ("bridge", "The Golden Gate Bridge spans the strait.", "Golden Gate Bridge", 0.9),
    ("tower", "Coit Tower stands on Telegraph Hill.", "Coit Tower", 0.5),
    ("whale", "Blue whales feed on krill.", None, 0.2),
]
DIM = len(PASSAGES) + 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("q", "", True, 0.5, None, 0.3, 0), ("ok", "")),
        (("q", "", True, 0.5, 2, 0.3, 5), ("ok", "")),
        (("q", "", True, 0.3, None, 0.3, 0), ("ok", "")),
        (("q", "", True, 0.29, None, 0.3, 0), ("filtered", "filter:gme_score")),
        (("q", "", True, 0.5, None, 0.3, 5), ("filtered", "filter:gme_rank")),
        (("q", "", False, None, None, 0.3, 5), ("rejected", "error:source_not_in_pool")),
        (("q", "error:image_too_small", True, None, None, 0.3, 0), ("rejected", "error:image_too_small")),
        (("", "", True, 0.9, 1, 0.3, 0), ("filtered", "filter:empty_query")),
    ],
)
def test_decide(args, expected):
    assert decide(*args) == expected


def test_instruction_file_is_the_default_instruction():
    text = (default_prompts_dir() / "gme_score" / "instruction.txt").read_text().strip()
    assert load_instruction(default_prompts_dir(), None, "gme_score") == text and text


def test_configured_instruction_wins_over_the_file(tmp_path):
    assert load_instruction(tmp_path, " Find it. ", "gme_score") == "Find it."


def test_empty_instruction_file_is_a_config_error(tmp_path):
    (tmp_path / "gme_score").mkdir()
    (tmp_path / "gme_score" / "instruction.txt").write_text("\n")
    with pytest.raises(PipelineConfigError, match="instruction"):
        load_instruction(tmp_path, None, "gme_score")


@pytest.mark.parametrize("bad", [{"threshold": 1.5}, {"top_k": -1}, {"instruction": "  "}])
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(PipelineConfigError):
        GmeScoreConfig(**bad)


def test_instruction_file_enters_the_fingerprint():
    assert GmeScore.prompt_files == ("gme_score/instruction.txt",)


@pytest.fixture
def world(tmp_path, monkeypatch):
    run_uri = str(tmp_path / "run")
    vectors = {"Q": scored(1.0, 1, DIM)}
    for k, (_, text, _, s) in enumerate(PASSAGES):
        vectors[text] = scored(s, k + 2, DIM)
    fake = FakeGme(vectors)
    monkeypatch.setattr(gme_pool, "load_embedder", lambda path, gme_cfg: fake)
    return run_uri, fake


def pool(world):
    run_uri, _ = world
    embed = gme_pool.GmePoolEmbedFn("unused", to_dict(gme_pool.GmePoolConfig()), run_uri)
    passages = [{"doc_id": d, "text": t, "title": title} for d, t, title, _ in PASSAGES]
    return build_pool(f"{run_uri}/_index", embed, passages)


def actor(world, handle=None, **kw) -> GmeScoreFn:
    return GmeScoreFn("unused", to_dict(GmeScoreConfig(**kw)), world[0], "Find the passage.", handle)


def rows(world, doc_ids: list[str], images: list | None = None, passage_image=None) -> pa.Table:
    run_uri = world[0]
    by_doc = {d: (t, title) for d, t, title, _ in PASSAGES}
    n = len(doc_ids)
    images = images if images is not None else [put_image(run_uri)] * n
    return pa.table(
        {
            "id": [f"{d}-q{i}" for i, d in enumerate(doc_ids)],
            "doc_id": doc_ids,
            "text": [by_doc.get(d, ("unknown passage", None))[0] for d in doc_ids],
            "title": pa.array([by_doc.get(d, (None, None))[1] for d in doc_ids], pa.string()),
            "image": pa.array([passage_image] * n, IMAGE_REF),
            "rewritten_query": ["Q"] * n,
            "query_image": pa.array(images, IMAGE_REF),
            SHARD: ["000000"] * n,
            SRC: list(range(n)),
        }
    )


def test_actor_scores_each_query_against_its_positive(world):
    out = actor(world)(rows(world, ["bridge", "tower", "whale"]))
    assert out["gme_pos_score"].to_pylist() == pytest.approx([0.9, 0.5, 0.2], abs=1e-5)


def test_actor_filters_rows_below_the_threshold(world):
    out = actor(world, threshold=0.4)(rows(world, ["bridge", "tower", "whale"]))
    assert out[REASON].to_pylist() == ["", "", "filter:gme_score"]


def test_actor_writes_the_instruction_and_no_rank_without_top_k(world):
    out = actor(world)(rows(world, ["bridge"]))
    assert (out["instruction"].to_pylist(), out["gme_pos_rank"].to_pylist()) == (
        ["Find the passage."],
        [None],
    )


def test_actor_encodes_query_with_instruction_and_positive_as_candidate(world):
    run_uri, fake = world
    actor(world)(rows(world, ["bridge"], passage_image=put_image(run_uri, size=(50, 30))))
    query, positive = fake.seen
    assert (query.text, query.instruction, query.image.size) == ("Q", "Find the passage.", GME_SIZE)
    assert (positive.title, positive.instruction, positive.image.size) == (
        "Golden Gate Bridge",
        None,
        (560, 392),  # 50x30 resized as the GME recipe does: multiples of 28, at least 256 image tokens
    )


def test_actor_positive_is_text_only_when_passage_images_are_off(world):
    run_uri, fake = world
    actor(world, passage_images=False)(rows(world, ["bridge"], passage_image=put_image(run_uri)))
    assert fake.seen[1].image is None


def test_actor_ranks_the_positive_in_the_pool_and_filters_outside_top_k(world):
    out = actor(world, pool(world), top_k=2, threshold=0.0)(rows(world, ["bridge", "tower", "whale"]))
    assert out["gme_pos_rank"].to_pylist() == [1, 2, None]
    assert out[REASON].to_pylist() == ["", "", "filter:gme_rank"]


def test_actor_with_a_pool_takes_the_positive_vector_from_it(world):
    index = pool(world)
    fake = world[1]
    fake.seen.clear()
    out = actor(world, index, top_k=3)(rows(world, ["tower"]))
    assert [i.text for i in fake.seen] == ["Q"]
    assert out["gme_pos_score"].to_pylist() == pytest.approx([0.5], abs=1e-5)


def test_actor_searches_the_pool_with_the_configured_nprobe(world, monkeypatch):
    fn = actor(world, pool(world), top_k=2, index=IndexConfig(nprobe=5))
    seen = record_nprobe(fn.pool, monkeypatch)
    fn(rows(world, ["bridge", "tower"]))
    assert seen == [5]


def test_actor_rejects_a_doc_missing_from_the_pool(world):
    out = actor(world, pool(world), top_k=2)(rows(world, ["nowhere"]))
    assert (out[STATUS].to_pylist(), out[REASON].to_pylist()) == (["rejected"], ["error:source_not_in_pool"])


def test_actor_rejects_missing_and_invalid_query_images(world):
    run_uri = world[0]
    images = [None, put_image(run_uri, b"\x89PNG cut"), put_image(run_uri, b"%!PS-Adobe-3.0 EPSF-3.0\n")]
    out = actor(world)(rows(world, ["bridge"] * 3, images))
    assert out[REASON].to_pylist() == [
        "error:no_query_image",
        "error:image_not_an_image",
        "error:image_format_not_allowed",
    ]
    assert out["gme_pos_score"].to_pylist() == [None, None, None]


def test_actor_fails_the_shard_when_a_stored_image_is_lost_rather_than_rejecting_the_row(world):
    lost = {"sha256": "0" * 64, "width": 1, "height": 1, "format": "png"}
    with pytest.raises(FileNotFoundError):
        actor(world)(rows(world, ["bridge"], [lost]))


def test_actor_rejects_with_the_gme_image_error_reason(world, monkeypatch):
    from pipeline.models import gme

    class TooSmall(gme.GmeImageError):
        def __init__(self) -> None:
            Exception.__init__(self, "too small")
            self.reason = "error:image_too_small"

    def refuse(img, min_tokens, max_tokens):
        raise TooSmall()

    monkeypatch.setattr(gme, "resize_for_gme", refuse)
    out = actor(world)(rows(world, ["bridge"]))
    assert out[REASON].to_pylist() == ["error:image_too_small"]


def test_actor_keeps_every_input_column_and_row_order(world):
    table = rows(world, ["whale", "bridge"]).append_column("entity", pa.array(["e1", "e2"]))
    out = actor(world)(table)
    assert set(table.column_names) < set(out.column_names)
    assert out["id"].to_pylist() == table["id"].to_pylist()


def test_config_loads_from_yaml_values():
    built = GmeScoreConfig.from_dict(
        {"threshold": 0.35, "top_k": 10, "index": {"kind": "ivf", "nprobe": 4},
         "gme": {"max_image_tokens": 512}}
    )
    assert (built.threshold, built.top_k, built.index, built.gme.max_image_tokens) == (
        0.35, 10, IndexConfig(kind="ivf", nprobe=4), 512
    )
