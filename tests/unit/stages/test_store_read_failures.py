"""A failing image store is the system, not the data (STYLE R35): a stage worker that cannot read a stored
image retries, then fails its shard; nothing is committed for that shard (no reject), and the resumed
shard, with the store healthy again, writes the same files a clean run writes.

The store is a real fsspec filesystem (a LocalFileSystem subclass that refuses reads of chosen files with
EIO, as a throttled S3/GCS or a flaky NFS mount does) behind pyarrow's FSSpecHandler, the way a run dir
on such a store is reached. The stage workers are called directly on a hand-built shard and written
with `write_pieces`, as the runner's workers do; no Ray.
"""

from __future__ import annotations

import errno
import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from pipeline.config import to_dict
from pipeline.io.commit import write_pieces
from pipeline.io.fs import RunFS
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.io.images import ImageReadError, ReadRetry
from pipeline.stage import SHARD, SRC
from pipeline.stages import gme_pool, mp_views
from pipeline.stages.gme_score import GmeScore, GmeScoreConfig, GmeScoreFn
from pipeline.stages.mp_views import ViewConfig, ViewEmbedFn
from tests.support.gme import FakeGme, ingest_rows, png, put_image, scored
from tests.unit.stages.test_mine_pairs import FakeModel, stored_pool

FAST = ReadRetry(attempts=3, base_wait_s=0.0, max_wait_s=0.0)


class FlakyLocalFS(LocalFileSystem):
    """Local files, except that reading a file whose name is in `failing` raises EIO (the first `times`
    reads of it; None: every read)."""

    cachable = False

    def __init__(self, failing: set[str], times: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.failing, self.times = failing, times
        self.refused: list[str] = []

    def _open(self, path, mode="rb", **kwargs):
        name = os.path.basename(path)
        if "r" in mode and name in self.failing and (self.times is None or self.refused.count(name) < self.times):
            self.refused.append(name)
            raise OSError(errno.EIO, "simulated storage failure: read throttled", path)
        return super()._open(path, mode, **kwargs)


def flaky_store(run_uri: str, failing: set[str], times: int | None = None) -> tuple[ImageStore, FlakyLocalFS]:
    fs = FlakyLocalFS(failing, times)
    return ImageStore(RunFS(pafs.PyFileSystem(pafs.FSSpecHandler(fs)), run_uri), FAST), fs


def committed(run_dir) -> dict[str, list[dict]]:
    """Every Parquet file under the run dir (parts and rejects), by relative path."""
    return {str(p.relative_to(run_dir)): pq.read_table(p).to_pylist() for p in sorted(run_dir.rglob("*.parquet"))}


def stage_files(run_dir, stage_dir: str) -> dict[str, list[dict]]:
    return {k: v for k, v in committed(run_dir).items() if k.startswith(f"{stage_dir}/")}


TEXTS = {"bridge": "The Golden Gate Bridge spans the strait.", "tower": "Coit Tower stands on Telegraph Hill.",
         "whale": "Blue whales feed on krill."}


@pytest.fixture
def gme_world(tmp_path, monkeypatch):
    vectors = {"Q": scored(1.0, 1, 5)} | {t: scored(s, k + 2, 5) for k, (t, s) in
                                          enumerate(zip(TEXTS.values(), (0.9, 0.5, 0.2)))}
    monkeypatch.setattr(gme_pool, "load_embedder", lambda path, gme_cfg: FakeGme(vectors))
    return tmp_path


def gme_shard(run_uri: str) -> tuple[pa.Table, list[dict]]:
    """One shard of three queries: two good stored images and one that is not an image (a real reject)."""
    images = [put_image(run_uri, size=(64, 48)), put_image(run_uri, size=(40, 40)), put_image(run_uri, b"junk")]
    docs = list(TEXTS)
    table = pa.table({
        "id": [f"{d}-q0" for d in docs], "doc_id": docs, "text": list(TEXTS.values()),
        "title": pa.array([None] * 3, pa.string()), "image": pa.array([None] * 3, IMAGE_REF),
        "rewritten_query": ["Q"] * 3, "query_image": pa.array(images, IMAGE_REF),
        SHARD: ["000000"] * 3, SRC: [0, 1, 2],
    })
    return table, images


def gme_score_shard(run_uri: str, store: ImageStore | None = None):
    """One gme_score shard as a worker runs it: the actor on the shard, then write_pieces."""
    stage = GmeScore(GmeScoreConfig(), None)
    fn = GmeScoreFn("unused", to_dict(GmeScoreConfig()), run_uri, "Find the passage.", None)
    if store is not None:
        fn.loader.store = store
    table, _ = gme_shard(run_uri)
    return write_pieces(fn(table), run_uri, stage, "07_gme_score", "07_gme_score/_parts")


def test_gme_score_fails_the_shard_on_a_failing_store_and_resume_matches_a_clean_run(gme_world):
    clean_dir, run_dir = gme_world / "clean", gme_world / "run"
    gme_score_shard(str(clean_dir))
    clean = stage_files(clean_dir, "07_gme_score")
    assert any("_rejects" in k for k in clean), "the clean run rejects the junk image"

    _, images = gme_shard(str(run_dir))
    second = os.path.basename(ImageStore.from_uri(str(run_dir)).rel(images[1]))
    store, fs = flaky_store(str(run_dir), {second})
    with pytest.raises(ImageReadError, match="EIO|throttled|failed 3 times"):
        gme_score_shard(str(run_dir), store)
    assert fs.refused == [second] * FAST.attempts
    assert stage_files(run_dir, "07_gme_score") == {}, "nothing committed for the failed shard, no reject"

    fs.failing.clear()
    gme_score_shard(str(run_dir), store)
    assert stage_files(run_dir, "07_gme_score") == clean


def test_a_read_that_recovers_within_the_retries_costs_nothing(gme_world):
    clean_dir, run_dir = gme_world / "clean", gme_world / "run"
    gme_score_shard(str(clean_dir))
    _, images = gme_shard(str(run_dir))
    name = os.path.basename(ImageStore.from_uri(str(run_dir)).rel(images[0]))
    store, fs = flaky_store(str(run_dir), {name}, times=FAST.attempts - 1)
    gme_score_shard(str(run_dir), store)
    assert fs.refused == [name] * (FAST.attempts - 1)
    assert stage_files(run_dir, "07_gme_score") == stage_files(clean_dir, "07_gme_score")


def test_gme_pool_side_stage_fails_rather_than_embedding_a_passage_without_its_image(gme_world):
    run_uri = str(gme_world / "run")
    ref = put_image(run_uri)
    store, _ = flaky_store(run_uri, {os.path.basename(ImageStore.from_uri(run_uri).rel(ref))})
    fn = gme_pool.GmePoolEmbedFn("unused", to_dict(gme_pool.GmePoolConfig()), run_uri)
    fn.loader.store = store
    with pytest.raises(ImageReadError):
        fn(ingest_rows([{"doc_id": "tower", "text": TEXTS["tower"], "image": ref}]))


def test_mp_view_fails_the_shard_on_a_failing_store_instead_of_rejecting_the_image(tmp_path, monkeypatch):
    monkeypatch.setattr(mp_views, "load_view_model", lambda view, path: FakeModel())
    run_uri = str(tmp_path / "run")
    table = stored_pool(run_uri, ["a", "b"], [png((16, 12)), png((16, 12), (1, 2, 3))])
    failing = os.path.basename(ImageStore.from_uri(run_uri).rel(table["image"][1].as_py()))
    fn = ViewEmbedFn(to_dict(ViewConfig(name="i", kind="clip_image")), "unused", run_uri)
    fn.store, fs = flaky_store(run_uri, {failing})
    with pytest.raises(ImageReadError):
        fn(table)
    assert fs.refused == [failing] * FAST.attempts


@pytest.fixture(scope="module")
def tiny_clip(tiny_cache) -> str:
    from pipeline.models.sources import resolve_model

    path, _ = resolve_model("tiny:clip", tiny_cache)
    return f"local-dir:{path}"


def clip_shard(run_uri: str, tiny_clip: str, store: ImageStore | None = None):
    """One clip_filter shard as a worker runs it: two good images, one junk one, then write_pieces."""
    from pipeline.prompts import default_prompts_dir, load_sources
    from pipeline.stages.clip_filter import ClipFilter, ClipFilterConfig, ClipScoreFn

    refs = [put_image(run_uri, size=(32, 32)), put_image(run_uri, png((32, 32), (1, 200, 3)), (32, 32)),
            put_image(run_uri, b"GIF89a cut")]
    table = pa.table({"id": ["a", "b", "c"], "entity": ["tower"] * 3, "entity_type": ["t"] * 3,
                      "query_image": pa.array(refs, IMAGE_REF), "image_source": ["retrieved"] * 3,
                      SHARD: ["000000"] * 3, SRC: [0, 1, 2]})
    sources = load_sources(default_prompts_dir(), ("clip_filter/text.j2",))
    cfg = ClipFilterConfig(threshold=-1.0)
    fn = ClipScoreFn(tiny_clip, to_dict(cfg), sources, run_uri)
    if store is not None:
        fn.store = store
    write_pieces(fn(table), run_uri, ClipFilter(cfg, None), "06_clip_filter", "06_clip_filter/_parts")
    return refs


def test_clip_filter_fails_the_shard_on_a_failing_store_and_resume_matches_a_clean_run(tmp_path, tiny_clip):
    clean_dir, run_dir = tmp_path / "clean", tmp_path / "run"
    clip_shard(str(clean_dir), tiny_clip)
    clean = stage_files(clean_dir, "06_clip_filter")
    assert [r["reason"] for k, v in clean.items() if "_rejects" in k for r in v] == ["error:image_not_an_image"]

    refs = [put_image(str(run_dir), size=(32, 32))]
    name = os.path.basename(ImageStore.from_uri(str(run_dir)).rel(refs[0]))
    store, fs = flaky_store(str(run_dir), {name})
    with pytest.raises(ImageReadError):
        clip_shard(str(run_dir), tiny_clip, store)
    assert stage_files(run_dir, "06_clip_filter") == {}
    fs.failing.clear()
    clip_shard(str(run_dir), tiny_clip, store)
    assert stage_files(run_dir, "06_clip_filter") == clean


def test_vllm_embed_request_lets_a_failing_store_read_propagate(tmp_path):
    from pipeline.models.gme import GmeConfig
    from pipeline.models.vllm_embed import EmbedColumns, embed_request

    run_uri = str(tmp_path / "run")
    good, junk = put_image(run_uri), put_image(run_uri, b"junk")
    store, _ = flaky_store(run_uri, {os.path.basename(ImageStore.from_uri(run_uri).rel(good))})
    columns = EmbedColumns(image="image")
    bad = embed_request({"text": "x", "image": junk}, columns, GmeConfig(), store.get)
    assert bad["_skip_reason"] == "error:image_not_an_image"
    with pytest.raises(ImageReadError):
        embed_request({"text": "x", "image": good}, columns, GmeConfig(), store.get)
