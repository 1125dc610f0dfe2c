"""pipeline/stages/gme_pool.py: the pool side stage's actor, the loose text hash, the pool's identity."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.config import to_dict
from pipeline.stage import Resources
from pipeline.stages import gme_pool
from tests.support.gme import GME_SIZE, FakeGme, ingest_rows, put_image

TEXT = "Coit Tower stands on Telegraph Hill."


@pytest.fixture
def world(tmp_path, monkeypatch):
    run_uri = str(tmp_path / "run")
    fake = FakeGme({TEXT: [1.0, 0.0, 0.0]})
    monkeypatch.setattr(gme_pool, "load_embedder", lambda path, gme_cfg: fake)
    return run_uri, fake


def embed(run_uri: str, **kw) -> gme_pool.GmePoolEmbedFn:
    return gme_pool.GmePoolEmbedFn("unused", to_dict(gme_pool.GmePoolConfig(**kw)), run_uri)


def test_pool_side_stage_embeds_candidates_with_title_and_own_image(world):
    run_uri, fake = world
    embed(run_uri)(
        ingest_rows([{"doc_id": "tower", "text": TEXT, "title": "T", "image": put_image(run_uri)}])
    )
    (cand,) = fake.seen
    assert (cand.text, cand.title, cand.instruction, cand.image.size) == (TEXT, "T", None, GME_SIZE)


def test_pool_side_stage_embeds_text_only_when_passage_images_are_off(world):
    run_uri, fake = world
    out = embed(run_uri, passage_images=False)(
        ingest_rows([{"doc_id": "t", "text": TEXT, "image": put_image(run_uri)}])
    )
    assert (fake.seen[0].image, out["image_used"].to_pylist()) == (None, [False])


def test_pool_side_stage_falls_back_to_text_when_gme_cannot_take_the_image(world):
    run_uri, fake = world
    junk = put_image(run_uri, b"junk")
    out = embed(run_uri)(ingest_rows([{"doc_id": "river", "text": TEXT, "image": junk}]))
    assert fake.seen[0].image is None
    assert out["image_used"].to_pylist() == [False] and out["image"].to_pylist() == [junk]


def test_pool_side_stage_writes_the_pool_metadata_and_embedding(world):
    run_uri, _ = world
    out = embed(run_uri)(ingest_rows([{"doc_id": "tower", "text": TEXT, "title": "T"}]))
    assert set(gme_pool.POOL_SCHEMA.names) | {"embedding"} <= set(out.column_names)
    assert out.select(["id", "doc_id", "content_hash"]).to_pylist() == [
        {"id": "tower", "doc_id": "tower", "content_hash": "h-tower"}
    ]
    assert out["text_hash"].to_pylist() == [gme_pool.text_hash(TEXT)]


def test_text_hash_ignores_case_punctuation_and_spacing():
    assert gme_pool.text_hash("The  Golden-Gate bridge!") == gme_pool.text_hash("the golden gate BRIDGE")
    assert gme_pool.text_hash("the golden gate") != gme_pool.text_hash("the golden gate bridge")


def test_pool_index_is_shared_only_under_the_same_candidate_settings():
    from pipeline.models.gme import GmeConfig

    base = GmeConfig()

    def key(gme, model_id="m", passage_images=True) -> str:
        spec = gme_pool.pool_spec("s", gme, "p", model_id, passage_images, "flat", 0, Resources(), None)
        return spec.key("ingest-fp")

    same = dataclasses.replace(base, query_instruction="other", batch_size=base.batch_size + 1)
    assert key(base) == key(same)
    assert (
        len(
            {
                key(base),
                key(base, model_id="finetuned"),
                key(base, passage_images=False),
                key(dataclasses.replace(base, max_image_tokens=base.max_image_tokens // 2)),
            }
        )
        == 4
    )
