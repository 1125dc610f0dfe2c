"""Runs on an embedded Ray in this process: re-run decisions, run-dir guards, whole-input errors."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle
import yaml

from pipeline.errors import RunDirError, StageInputError, StageStalledError
from pipeline.rundir import RunContext
from pipeline.runner import run_pipeline
from pipeline.settings import build_stages, load_config
from pipeline.stage import Resources, Stage, StageConfig, glue_map, status_columns
from tests.support.ledger import check_ledgers

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_ray")]
# The session cluster's workers cannot import this test module: its Stall stage travels by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def run(run_dir: Path, cache: Path, *overrides: str, force: bool = False):
    # The text stages are enough for what these tests check (fingerprints, re-runs, refusals, the pool
    # index); the whole track runs in test_jobs.py and test_openai_backend.py.
    sets = [
        "stages=[ingest, doc2query, consistency, export]", "export.schema=passthrough",
        "doc2query.llm.model=tiny:qwen2", f"cache_dir={cache}", "doc2query.llm.max_new_tokens=300",
        # Short strings so the random tiny model closes its JSON (rows reach consistency and export).
        "doc2query.max_query_chars=40", "doc2query.max_answer_chars=20",
        "doc2query.resources.shard_rows=16", "doc2query.queries_per_passage=1", *overrides,
    ]
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml", sets)
    ctx = RunContext.create(config, str(run_dir), force)
    return {r.name: r.decision for r in run_pipeline(ctx, build_stages(config, ctx))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_cache):
    run_dir = tmp_path_factory.mktemp("local") / "run"
    run(run_dir, tiny_cache)
    return run_dir


def test_every_ledger_matches_its_plan_its_files_and_the_stage_before(finished):
    check_ledgers(finished, ("01_ingest", "02_doc2query", "03_consistency", "export"))


def test_rerun_with_nothing_changed_skips_every_stage(finished, tiny_cache):
    decisions = run(finished, tiny_cache)
    assert all(d.startswith("skipped") for d in decisions.values()), decisions


def test_changed_stage_value_reruns_that_stage_and_later_only(finished, tiny_cache, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    decisions = run(copy, tiny_cache, "doc2query.max_answer_chars=150")
    assert decisions["ingest"].startswith("skipped")
    assert decisions["doc2query"].startswith("re-run") and "max_answer_chars: 20 -> 150" in decisions["doc2query"]
    assert decisions["consistency"].startswith("re-run")
    assert decisions["export"].startswith("re-run")


def test_changed_top_k_reruns_consistency_and_reuses_the_pool_index(finished, tiny_cache, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    decisions = run(copy, tiny_cache, "consistency.top_k=3")
    assert [decisions[s][:7] for s in ("ingest", "doc2query", "consistency", "export")] == [
        "skipped", "skipped", "re-run:", "re-run:",
    ]
    (index,) = (copy / "_index").glob("text-*/_manifest.json")
    assert json.loads(index.read_text())["decision"].startswith("skipped")


def test_consistency_ranks_every_kept_query_within_top_k(finished):
    kept = pq.read_table(finished / "03_consistency", columns=["consistency_rank"])["consistency_rank"].to_pylist()
    rejects = pq.read_table(finished / "03_consistency" / "_rejects").to_pylist()
    assert all(1 <= r <= 5 for r in kept)
    assert all(r["reason"] == "filter:consistency" and r["consistency_rank"] is None for r in rejects)


def test_changed_prompt_file_reruns_the_stage_that_uses_it(finished, tiny_cache, tmp_path, repo_root):
    copy, prompts = tmp_path / "run", tmp_path / "prompts"
    shutil.copytree(finished, copy)
    shutil.copytree(repo_root / "prompts", prompts)
    user = prompts / "doc2query" / "user.j2"
    user.write_text(user.read_text().replace("question-answer pairs", "question and answer pairs"))
    decisions = run(copy, tiny_cache, f"prompts_dir={prompts}")
    assert decisions["ingest"].startswith("skipped")
    assert decisions["doc2query"].startswith("re-run")


def test_run_dir_of_another_stage_list_is_refused_without_force(finished, tiny_cache, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    meta = yaml.safe_load((copy / "run.yaml").read_text())
    meta["stages"] = ["ingest", "export"]
    (copy / "run.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(RunDirError, match="stages"):
        run(copy, tiny_cache)


def test_run_dir_of_another_stage_list_is_replaced_with_force(finished, tiny_cache, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    decisions = run(copy, tiny_cache, "stages=[ingest, export]", force=True)
    assert decisions == {"ingest": "run: no previous output", "export": "run: no previous output"}
    assert yaml.safe_load((copy / "run.yaml").read_text())["stages"] == ["ingest", "export"]
    assert not (copy / "02_doc2query").exists()


def test_run_dir_of_another_package_version_is_refused(finished, tiny_cache, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    meta = yaml.safe_load((copy / "run.yaml").read_text())
    meta["fusegen_version"] = "0.0.1"
    (copy / "run.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(RunDirError, match="fusegen 0.0.1"):
        run(copy, tiny_cache)


def test_parquet_with_wrong_column_type_fails_before_any_stage_output(tiny_cache, tmp_path):
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b"], "text": pa.array([1, 2], pa.int64())}), corpus)
    with pytest.raises(StageInputError, match=r"column 'text' in .*corpus.parquet"):
        run(tmp_path / "run", tiny_cache, f"ingest.path={corpus}")
    assert not list((tmp_path / "run").glob("01_ingest/part-*"))


def test_empty_input_is_a_clear_error(tiny_cache, tmp_path):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text("\n\n")
    with pytest.raises(StageInputError, match="no records"):
        run(tmp_path / "run", tiny_cache, f"ingest.path={corpus}")


def test_parquet_corpus_with_mapped_columns_ingests_every_row(tiny_cache, tmp_path):
    corpus = tmp_path / "c.parquet"
    pq.write_table(pa.table({"pid": ["p1", "p2", "p3"], "passage": ["Alpha text.", "Beta text.", "   "]}), corpus)
    run(tmp_path / "run", tiny_cache, f"ingest.path={corpus}", "ingest.columns.doc_id=pid",
        "ingest.columns.text=passage", "stages=[ingest, export]")
    m = json.loads((tmp_path / "run" / "01_ingest" / "_manifest.json").read_text())
    assert m["rows"] == {"in": 3, "out": 2, "filtered": 0, "rejected": 1}


def test_only_the_images_the_records_name_decide_whether_ingest_runs(tiny_cache, tmp_path):
    """Issue 19/9: a folder of unrelated images written beside the corpus re-ran ingest and every stage
    after it. Now an edit to an image a record names re-runs them, and nothing else beside the corpus does."""
    from PIL import Image

    def png(path: Path, color: tuple[int, int, int]) -> None:
        Image.new("RGB", (16, 12), color).save(path, format="PNG")

    folder = tmp_path / "corpus"
    (folder / "img").mkdir(parents=True)
    png(folder / "img" / "cat.png", (200, 20, 20))
    png(folder / "img" / "dog.png", (20, 200, 20))
    corpus = folder / "c.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in [
        {"doc_id": "a", "text": "A red picture of a cat.", "image": "img/cat.png"},
        {"doc_id": "b", "text": "A green picture of a dog.", "image": "img/dog.png"},
        {"doc_id": "c", "text": "A passage without a picture."}]))
    run_dir, sets = tmp_path / "run", ("stages=[ingest, export]", f"ingest.path={corpus}")
    first = run(run_dir, tiny_cache, *sets)
    assert set(first.values()) == {"run: no previous output"}
    assert json.loads((run_dir / "01_ingest" / "_manifest.json").read_text())["read"]["files"] == [
        "img/cat.png", "img/dog.png"]
    (folder / "unrelated").mkdir()
    for i in range(3):
        png(folder / "unrelated" / f"u{i}.png", (i, i, i))
    png(folder / "img" / "not_named.png", (1, 2, 3))
    assert set(run(run_dir, tiny_cache, *sets).values()) == {"skipped: complete with the same fingerprint"}
    png(folder / "img" / "dog.png", (20, 20, 200))
    again = run(run_dir, tiny_cache, *sets)
    assert again["ingest"] == "re-run: files read by the last run changed: img/dog.png"
    assert again["export"].startswith("re-run"), again


class Stall(Stage):
    """A pass-through stage whose glue task sleeps on the shard holding a passage with HANG in it."""

    name = "stall"
    config_cls = StageConfig
    hang_s = 8.0

    def apply(self, ds):
        def maybe_hang(table: pa.Table, hang_s: float) -> pa.Table:
            import time

            if any("HANG" in t for t in table.column("text").to_pylist()):
                time.sleep(hang_s)
            for name, values in status_columns(len(table)).items():
                table = table.append_column(name, pa.array(values, pa.string()))
            return table

        return glue_map(ds, maybe_hang, fn_kwargs={"hang_s": self.hang_s})


def test_a_stage_that_stops_finishing_shards_fails_with_stalled_and_resumes(tiny_cache, tmp_path):
    corpus = tmp_path / "c.jsonl"
    texts = ["First passage.", "Second passage.", "HANG here.", "Fourth passage."]
    corpus.write_text("".join(json.dumps({"doc_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml", [
        f"cache_dir={tiny_cache}", f"ingest.path={corpus}", "ingest.resources.shard_rows=1",
    ])
    ctx = RunContext.create(config, str(tmp_path / "run"))
    ingest = build_stages(config, ctx)[0]
    stall = Stall(StageConfig(Resources(shard_rows=1, stall_timeout_s=3)), ctx)
    with pytest.raises(StageStalledError, match="stall: no progress for `stall.resources.stall_timeout_s` = 3 s"):
        run_pipeline(ctx, [ingest, stall])
    # The abandoned execution ends when the hung task returns; wait for it, or Ray Data would restart
    # Ray by itself after this module's `ray.shutdown` and the next module's `ray.init` would fail.
    for thread in threading.enumerate():
        if thread.name == "fusegen-stall-blocks":
            thread.join(60)
            assert not thread.is_alive()
    manifest = json.loads((tmp_path / "run" / "02_stall" / "_manifest.json").read_text())
    assert (manifest["status"], manifest["error"].split(":")[0]) == ("failed", "StageStalledError")
    # The three shards that finished stay committed; a rerun (the engine healthy again) adds the fourth.
    assert len(list((tmp_path / "run" / "02_stall" / "_parts").glob("*.json"))) == 3
    stall.hang_s = 0.0
    decisions = [r.decision for r in run_pipeline(ctx, [ingest, stall])]
    assert decisions[1].startswith("resume")
    done = json.loads((tmp_path / "run" / "02_stall" / "_manifest.json").read_text())
    assert (done["status"], done["rows"]["out"]) == ("complete", 4)
