"""The runner's data path, in-process on the session cluster: a track with one stage class under two
sections, a variable fan-out with its ledger, input identity, and indexes shared between runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray.cloudpickle

import tests.support.tracks as test_tracks
from pipeline.io.fs import RunFS
from pipeline.rundir import RunContext
from pipeline.runner import run_pipeline
from pipeline.settings import build_stages, load_config
from pipeline.status import format_status
from tests.support.ledger import check_ledgers

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_ray")]
# The test track's stage lives in the tests, which Ray workers cannot import: send it by value.
ray.cloudpickle.register_pickle_by_value(test_tracks)

TEXTS = ["Alpha passage.", "Beta passage.", "SKIP this one.", "Delta passage.", "Epsilon passage.", "Zeta."]


def write_corpus(folder: Path, texts: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "c.jsonl"
    path.write_text("".join(json.dumps({"doc_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def run_track(run_dir: Path, corpus: Path, cache: Path, *sets: str) -> dict[str, str]:
    config_file = run_dir.parent / "track.yaml"
    config_file.write_text(
        f"pipeline: {test_tracks.TRACK}\ncache_dir: {cache}\ningest: {{path: {corpus}}}\n"
        "tag_a: {column: a, value: one}\ntag_b: {column: b, fanout: 2}\nexport: {schema: passthrough}\n"
    )
    config = load_config(config_file, list(sets))
    ctx = RunContext.create(config, str(run_dir))
    return {r.name: r.decision for r in run_pipeline(ctx, build_stages(config, ctx))}


def manifest(run_dir: Path, folder: str) -> dict:
    return json.loads((run_dir / folder / "_manifest.json").read_text())


@pytest.fixture(scope="module")
def track_run(tmp_path_factory, tiny_cache):
    root = tmp_path_factory.mktemp("track")
    corpus = write_corpus(root / "corpus", TEXTS)
    run_track(root / "run", corpus, tiny_cache)
    return root / "run", corpus


def test_two_sections_of_one_stage_class_each_apply_their_own_config(track_run):
    rows = pq.read_table(track_run[0] / "export" / "data").to_pylist()
    assert {(r["a"], r["b"]) for r in rows} == {("one", "x")}
    assert sorted(r["id"] for r in rows)[:2] == ["d0-a0-b0", "d0-a0-b1"]


def test_variable_fanout_ledger_counts_units_and_input_rows(track_run):
    check_ledgers(track_run[0], ("01_ingest", "02_tag_a", "03_tag_b", "export"))
    a, b = manifest(track_run[0], "02_tag_a"), manifest(track_run[0], "03_tag_b")
    assert (a["input_rows"], a["rows"]) == (6, {"in": 6, "out": 5, "filtered": 1, "rejected": 0})
    assert (b["input_rows"], b["rows"]) == (5, {"in": 10, "out": 10, "filtered": 0, "rejected": 0})
    assert a["fanout"] is None and a["reasons"] == {"filter:skip": 1}


def test_filtered_units_are_in_rejects_with_their_parent_row(track_run):
    (reject,) = pq.read_table(track_run[0] / "02_tag_a" / "_rejects").to_pylist()
    assert (reject["parent_id"], reject["reason"]) == ("d2", "filter:skip")


def test_status_shows_input_rows_and_units(track_run):
    out = format_status(RunFS.from_uri(str(track_run[0])))
    line = next(x for x in out.splitlines() if x.startswith("tag_b"))
    assert line.split()[2:5] == ["5", "10", "10"]


def test_driver_received_only_receipts(track_run):
    for folder in ("01_ingest", "02_tag_a", "03_tag_b", "export"):
        m = manifest(track_run[0], folder)
        assert 0 < m["driver_receipt_bytes"] < 4096 * m["shards"]["done"], folder


def test_rerun_with_nothing_changed_skips_every_stage(track_run, tiny_cache):
    run_dir, corpus = track_run
    assert set(run_track(run_dir, corpus, tiny_cache).values()) == {"skipped: complete with the same fingerprint"}


def test_editing_the_corpus_reruns_ingest_and_everything_after_it(track_run, tiny_cache, tmp_path):
    import shutil

    run_dir, corpus = tmp_path / "run", write_corpus(tmp_path / "corpus", TEXTS)
    shutil.copytree(track_run[0], run_dir)
    decisions = run_track(run_dir, corpus, tiny_cache)
    assert decisions["ingest"].startswith("skipped"), "a copy of the same corpus is the same input"
    corpus.write_text(corpus.read_text().replace("Beta", "Gamma"))
    decisions = run_track(run_dir, corpus, tiny_cache)
    assert decisions["ingest"] == "re-run: input files changed: c.jsonl"
    assert all(d.startswith("re-run") for d in decisions.values())
    assert "Gamma passage." in pq.read_table(run_dir / "export" / "data")["text"].to_pylist()


def test_a_shared_index_dir_serves_a_second_run_without_rebuilding(tiny_cache, tmp_path, repo_root):
    corpus = write_corpus(tmp_path / "corpus", TEXTS[:4])
    shared = tmp_path / "indexes"
    sets = [f"cache_dir={tiny_cache}", f"ingest.path={corpus}", f"index_dir={shared}",
            "stages=[ingest, doc2query, consistency, export]", "export.schema=passthrough",
            "doc2query.llm.model=tiny:qwen2",
            "doc2query.queries_per_passage=1", "doc2query.llm.max_new_tokens=120",
            "doc2query.max_query_chars=40", "doc2query.max_answer_chars=20", "consistency.top_k=4"]
    config = load_config(repo_root / "configs" / "demo.yaml", sets)
    ctx = RunContext.create(config, str(tmp_path / "first"))
    run_pipeline(ctx, build_stages(config, ctx))
    (index,) = shared.glob("text-*")
    built = (index / "index.faiss").stat().st_mtime_ns
    # The second run dir starts as a copy of the first without consistency (the same passages and queries,
    # without running the model again): consistency runs there and looks for its index.
    second = tmp_path / "second"
    shutil.copytree(tmp_path / "first", second, ignore=shutil.ignore_patterns("03_consistency", "export"))
    ctx = RunContext.create(config, str(second))
    decisions = {r.name: r.decision for r in run_pipeline(ctx, build_stages(config, ctx))}
    assert decisions["consistency"].startswith("run"), decisions
    assert json.loads((index / "_manifest.json").read_text())["decision"].startswith("skipped")
    assert (index / "index.faiss").stat().st_mtime_ns == built and not (second / "_index").exists()


def test_index_images_builds_the_pool_index_a_run_then_reuses(tiny_cache, tmp_path, repo_root, capsys):
    """`fusegen index-images` ahead of time, then the images stage's index with the same pool and
    retriever is found in the shared dir and not rebuilt; an edited pool is a new index."""
    from pipeline.cli import main as cli
    from pipeline.runner import build_index
    from pipeline.stages.images import Images

    shared = tmp_path / "indexes"
    pool = tmp_path / "pool"
    shutil.copytree(repo_root / "samples" / "pool", pool)
    sets = [f"cache_dir={tiny_cache}", f"images.pool.path={pool / 'pool.jsonl'}"]
    config_file = str(repo_root / "configs" / "demo.yaml")
    assert cli(["index-images", str(pool), "--out", str(shared), "--config", config_file,
                "--set", f"cache_dir={tiny_cache}"]) == 0
    assert "image index: 27 images" in capsys.readouterr().out
    (built,) = shared.glob("image-*")

    def index_for(run: str):
        config = load_config(config_file, sets)
        ctx = RunContext.create(config, str(tmp_path / run), index_dir=str(shared))
        stage = Images(config.sections["images"], ctx, "images")
        stage.prepare()
        (spec,) = stage.indexes()
        return build_index(ctx, stage, spec, {})

    handle = index_for("run1")
    assert handle.folder == built.name and handle.count == 27
    assert json.loads((built / "_manifest.json").read_text())["decision"].startswith("skipped")
    with open(pool / "pool.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "extra", "image": "images/pizza.png", "caption": "another pizza"}) + "\n")
    edited = index_for("run2")
    assert edited.folder != built.name and edited.count == 28
