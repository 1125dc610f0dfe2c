"""End to end through `ray job submit` on a real local cluster, as users run fusegen.

Runs use the sample corpus and the tiny random Qwen2 (the demo's SmolLM2 is exercised by the README
demo; here speed matters). Small shards make a kill land mid-stage with some shards committed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from samples.corpus_source import expected_ingest, expected_reasons, load_rows
from tests.conftest import long_variant
from tests.support.ledger import check_ledgers

pytestmark = pytest.mark.e2e

# What ingest must answer for the sample corpus comes from its source data (each bad row's `expect`).
SAMPLE_ROWS = load_rows()
EXPECTED_INGEST = expected_ingest(SAMPLE_ROWS)


def job_args(run_dir: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "configs/demo.yaml", "--run-dir", str(run_dir),
        # entities runs in test_openai_backend.py, where a server gives it answers that make sense.
        "--set", "stages=[ingest, doc2query, consistency, export]", "--set", "export.schema=passthrough",
        "--set", "doc2query.llm.model=tiny:qwen2",
        # One query a passage: the random tiny model's JSON is the run's cost, not what is checked here.
        "--set", "doc2query.queries_per_passage=1",
        "--set", f"cache_dir={cache}",
        "--set", "doc2query.resources.shard_rows=2",
        "--set", "doc2query.resources.concurrency=1",
        "--set", "doc2query.llm.max_new_tokens=300",
        "--set", "doc2query.max_query_chars=40",
        "--set", "doc2query.max_answer_chars=20",
        # The tiny model's queries are noise: rank against the whole passage pool so rows reach export.
        "--set", f"consistency.top_k={EXPECTED_INGEST['out']}",
        *extra,
    ]


def manifest(run_dir: Path, folder: str) -> dict:
    return json.loads((run_dir / folder / "_manifest.json").read_text())


def export_rows(run_dir: Path) -> list[dict]:
    table = pq.read_table(run_dir / "export" / "data", columns=["id", "doc_id", "query", "answer", "image"])
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    # Compare images by content hash (the export materialises them from the run's store).
    import hashlib

    for r in rows:
        r["image"] = hashlib.sha256(r["image"]["bytes"]).hexdigest() if r["image"] else None
    return rows


def run_job(cluster, job_id: str, args: list[str]) -> None:
    cluster.submit(job_id, args)
    state = cluster.wait(job_id)
    assert state == "SUCCEEDED", cluster.logs(job_id)[-4000:]


@pytest.fixture(scope="module")
def clean_run(ray_cluster, tmp_path_factory, tiny_cache):
    run_dir = tmp_path_factory.mktemp("clean") / "run"
    run_job(ray_cluster, "clean-run", job_args(run_dir, tiny_cache))
    return run_dir


def test_submitted_demo_writes_every_stage_with_a_balanced_ledger(clean_run):
    check_ledgers(clean_run, ("01_ingest", "02_doc2query", "03_consistency", "export"))
    assert manifest(clean_run, "01_ingest")["rows"] == EXPECTED_INGEST


def test_submitted_demo_doc2query_accounts_for_every_query_slot(clean_run):
    m = manifest(clean_run, "02_doc2query")
    assert m["rows"]["in"] == EXPECTED_INGEST["out"] * 1  # one query slot per kept passage
    assert m["rows"]["out"] > 0
    assert sum(m["reasons"].values()) == m["rows"]["filtered"] + m["rows"]["rejected"]


def test_submitted_demo_rejects_carry_an_id_and_a_reason(clean_run):
    rejects = pq.read_table(clean_run / "01_ingest" / "_rejects").to_pylist()
    assert Counter(r["reason"] for r in rejects) == Counter(filter(None, expected_reasons(SAMPLE_ROWS)))
    assert all(r["id"] for r in rejects)


def test_submitted_demo_export_loads_with_datasets_and_images_decode(clean_run):
    from datasets import load_dataset

    ds = load_dataset("parquet", data_dir=str(clean_run / "export" / "data"), split="train")
    assert {"id", "doc_id", "query", "answer", "image", "text"} <= set(ds.column_names)
    with_image = [row["image"] for row in ds if row["image"] is not None]
    assert with_image and all(img.size[0] > 0 for img in with_image)


def test_status_prints_the_funnel_of_a_finished_run(clean_run, repo_root):
    out = subprocess.run(
        ["fusegen", "status", str(clean_run)], capture_output=True, text=True, check=True, cwd=repo_root,
        env={**os.environ, "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"},
    ).stdout
    assert "ingest" in out and "doc2query" in out and "export" in out
    assert "error:duplicate_doc_id" in out or "error:empty_text" in out


def _wait_for_shards(cluster, job_id: str, run_dir: Path, at_least: int, timeout: float = 420) -> int:
    marks = run_dir / "02_doc2query" / "_parts"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = len(list(marks.glob("*.json"))) if marks.exists() else 0
        if n >= at_least:
            return n
        state = cluster.status(job_id)
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            raise AssertionError(f"job {job_id} ended ({state}) with {n} doc2query shards:\n{cluster.logs(job_id)[-3000:]}")
        time.sleep(0.3)
    raise TimeoutError(f"doc2query committed {n} < {at_least} shards in {timeout}s:\n{cluster.logs(job_id)[-3000:]}")


def _model_worker_pids() -> list[int]:
    """This session's doc2query actors (Ray titles their processes `ray::MapWorker(...HFGenerateFn...)`)."""
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if "HFGenerateFn" in " ".join(p.info.get("cmdline") or []) and p.pid != os.getpid()]


def stored_images(run_dir: Path) -> dict[str, str]:
    """name -> SHA-256 of the contents, for every file in the run's image store."""
    import hashlib

    return {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in (run_dir / "_images").rglob("*.*")}


def _driver_pids(run_dir: Path) -> list[int]:
    # `--` so pgrep does not read the pattern, which starts with a dash, as its own option.
    out = subprocess.run(["pgrep", "-f", "--", f"--run-dir {run_dir}"], check=False, capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


@long_variant("faults", "stopping and killing a run mid-doc2query")
def test_stop_and_kill_mid_doc2query_then_resume_equals_clean_run(ray_cluster, clean_run, tmp_path, tiny_cache):
    """`ray job stop`, then `kill -9` of the model workers and of the driver, then a resume that must equal
    the clean run. The long variant: in the default suite the short track's seeded faults
    (tests/e2e/test_fault_resume.py) stop a job, kill a worker mid-shard and kill the driver after a
    commit, each resumed and compared with a clean run the same way."""
    run_dir = tmp_path / "run"
    args = job_args(run_dir, tiny_cache)
    # 1. `ray job stop` while doc2query is part-way through.
    ray_cluster.submit("kill-a", args)
    _wait_for_shards(ray_cluster, "kill-a", run_dir, 2)
    ray_cluster.stop("kill-a")
    assert ray_cluster.wait("kill-a") in ("STOPPED", "FAILED")
    assert manifest(run_dir, "02_doc2query")["status"] != "complete"
    # 2. Resume, `kill -9` of a model worker mid-shard (Ray restarts it), then of the driver.
    ray_cluster.submit("kill-b", args)
    done_before = len(list((run_dir / "02_doc2query" / "_parts").glob("*.json")))
    _wait_for_shards(ray_cluster, "kill-b", run_dir, done_before + 1)
    workers = _model_worker_pids()
    assert workers, "no doc2query worker process found"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    _wait_for_shards(ray_cluster, "kill-b", run_dir, done_before + 3)
    pids = _driver_pids(run_dir)
    assert pids, "driver process not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    ray_cluster.wait("kill-b")
    assert manifest(run_dir, "02_doc2query")["status"] != "complete"
    # 3. Resume to the end: same rows as the clean run, no duplicates, none missing.
    run_job(ray_cluster, "kill-c", args)
    assert manifest(run_dir, "01_ingest")["decision"].startswith("skipped")
    assert manifest(run_dir, "02_doc2query")["decision"].startswith("resume")
    resumed, clean = export_rows(run_dir), export_rows(clean_run)
    assert len({r["id"] for r in resumed}) == len(resumed)
    assert resumed == clean
    # The image store: the same images, each once, none half-written, none that no row references.
    store = stored_images(run_dir)
    assert store == stored_images(clean_run)
    assert all(name == digest for name, digest in store.items())
    ingest_rows = pq.read_table(run_dir / "01_ingest").to_pylist() + pq.read_table(run_dir / "01_ingest" / "_rejects").to_pylist()
    assert set(store) == {r["image"]["sha256"] for r in ingest_rows if r.get("image")}


def _writer_pids() -> list[int]:
    """Ray workers running a stage's write step right now: Ray titles a worker process after the task
    it runs (`ray::MapBatches(...write_pieces)`), and back to `ray::IDLE` when it ends."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if b"write_pieces" in f.read():
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@long_variant("faults", "killing the workers that write a shard")
def test_kill_of_workers_while_they_write_a_shard_then_resume_equals_clean_run(request, ray_cluster, tmp_path,
                                                                              tiny_cache):
    """`kill -9` of the worker writing a shard's parts and rejects (caught while its title names the write
    step, so the kill lands inside it), twice: Ray runs the task again or the run fails; a resume ends
    with the clean run's rows and images, no leftover files. The long variant (`-m faults`): in the
    default suite the short track's seeded `kill` (tests/e2e/test_fault_resume.py) kills the worker that
    computes and writes a shard, and its resume is compared with a clean run the same way."""
    clean_run = request.getfixturevalue("clean_run")
    run_dir = tmp_path / "run"
    args = job_args(run_dir, tiny_cache)
    ray_cluster.submit("write-kill-a", args)
    killed, next_status, state = [], 0.0, "RUNNING"
    deadline = time.monotonic() + 420
    while len(killed) < 2 and time.monotonic() < deadline:
        for pid in _writer_pids():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
            time.sleep(1.0)  # let the stage go on before the next kill
        if time.monotonic() > next_status:
            state, next_status = ray_cluster.status("write-kill-a"), time.monotonic() + 1
            if state in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
        time.sleep(0.005)
    assert killed, "no worker was caught in a stage's write step"
    state = ray_cluster.wait("write-kill-a")
    if state != "SUCCEEDED":
        run_job(ray_cluster, "write-kill-b", args)
    resumed, clean = export_rows(run_dir), export_rows(clean_run)
    assert len({r["id"] for r in resumed}) == len(resumed)
    assert resumed == clean
    assert stored_images(run_dir) == stored_images(clean_run)
    # Nothing a marker does not name is left in any stage folder (parts, rejects, temporaries).
    stage_dirs = [p for p in run_dir.iterdir() if (p / "_manifest.json").exists()]
    assert sorted(p.name for p in stage_dirs) == ["01_ingest", "02_doc2query", "03_consistency", "export"]
    for stage_dir in stage_dirs:
        named = set()
        for marker in (stage_dir / "_parts").glob("*.json"):
            files = json.loads(marker.read_text())["files"]
            named |= {(run_dir / f).resolve() for f in files["parts"] + files["rejects"]}
        left = {p.resolve() for p in stage_dir.rglob("*.parquet") if "_parts" not in p.parts}
        assert left <= named and not list(stage_dir.rglob(".*.tmp")), stage_dir
