"""Tracks through `ray job submit` under seeded faults, resumed until they finish: the result must equal
a clean run's, stage by stage (kept ids, content hashes, rejects with reasons, ledgers), with the same
image store and no temporary or unnamed file left.

Two tracks: the short one (tests/support/tracks.py: ingest, two pure stages, export; seconds a run) runs in
the default suite; the whole GME track (every stage, its model actors, the LLM stages on a local
OpenAI-compatible server) only under `pytest -m faults`. Faults come from pipeline/faults.py (FUSEGEN_FAULTS,
a plan file per seed) and from the test itself (`ray job stop`); tests/support/fault_runs.py draws them.
Seeds: 4 by default (tests/conftest.fault_seeds), 10 under `-m faults`; FUSEGEN_FAULT_SEEDS=N (a count) or =3,8 (a list; one seed: 5,)
picks them (tests/conftest.py). A failure names its seed and plan.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import long_variant
from tests.support.fault_runs import (
    ACTORS,
    KEY,
    KEY_ENV,
    SHORT_ENTRY,
    SHORT_STAGES,
    STAGES,
    committed_shards,
    draw_plan,
    job_args,
    ledger_problems,
    leftovers,
    short_track_args,
    snapshot,
    stage_folders,
)
from tests.support.grounded_llm import GroundedLLM
from tests.support.openai_server import OpenAIServer

pytestmark = [pytest.mark.e2e, pytest.mark.faults]
MAX_ATTEMPTS = 4


@pytest.fixture(scope="module")
def llm_server():
    with OpenAIServer(default=GroundedLLM()) as server:
        yield server


def submit(cluster, job_id: str, args: list[str], env: dict, entry: list[str] | None = None) -> None:
    cluster.ray(
        "job", "submit", "--address", cluster.address, "--submission-id", job_id, "--no-wait",
        "--working-dir", ".", "--runtime-env-json", json.dumps({"env_vars": env}), "--",
        *(entry or ["fusegen"]), "run", *args,
    )


def run_clean(cluster, job_id: str, args: list[str], env: dict, entry: list[str] | None = None) -> float:
    started = time.monotonic()
    submit(cluster, job_id, args, env, entry)
    state = cluster.wait(job_id)
    assert state == "SUCCEEDED", cluster.logs(job_id)[-4000:]
    return time.monotonic() - started


@pytest.fixture(scope="module")
def clean(ray_cluster, tmp_path_factory, tiny_cache, llm_server):
    run_dir = tmp_path_factory.mktemp("fault-clean") / "run"
    seconds = run_clean(ray_cluster, "fault-clean", job_args(run_dir, tiny_cache, llm_server.base_url), {KEY_ENV: KEY})
    print(f"\nclean whole-track run: {seconds:.0f} s")
    return run_dir, snapshot(run_dir), committed_shards(run_dir)


@pytest.fixture(scope="module")
def short_clean(ray_cluster, tmp_path_factory, tiny_cache):
    root = tmp_path_factory.mktemp("fault-short")
    args = [*short_track_args(root, tiny_cache), "--run-dir", str(root / "run")]
    seconds = run_clean(ray_cluster, "fault-short-clean", args, {}, SHORT_ENTRY)
    print(f"\nclean short-track run: {seconds:.0f} s")
    return root / "run", snapshot(root / "run"), committed_shards(root / "run")


def test_the_short_clean_run_dedups_inside_and_across_shards(short_clean):
    """The short corpus exercises every dedup path the faults then interrupt (fault_runs.short_track_args):
    a repeat held by its worker, one across shards, reused ids, and a held row that comes back."""
    run_dir, snap, shards = short_clean
    assert len(shards["ingest"]) == 4
    assert snap["ingest"]["rejects"] == [("d12", "filter:duplicate_text"), ("d20", "error:duplicate_doc_id"),
                                         ("d3", "error:duplicate_doc_id"), ("d5", "filter:duplicate_text")]
    assert "d18" in snap["ingest"]["ids"] and not ledger_problems(run_dir) and not leftovers(run_dir)
    assert not list((stage_folders(run_dir)["ingest"] / "_held").glob("*"))


@long_variant("faults", "the whole GME track under faults")
def test_the_clean_run_reaches_export_through_every_stage(clean):
    run_dir, snap, _ = clean
    assert list(stage_folders(run_dir)) and set(snap) - {"_images"} == {
        "ingest", "doc2query", "consistency", "entities", "images", "clip_filter", "gme_score", "negatives",
        "export"}
    assert snap["export"]["ids"], "no row reached export: the faults would prove nothing about later stages"
    assert not ledger_problems(run_dir) and not leftovers(run_dir)


def _stop_when_committed(cluster, job_id: str, run_dir: Path, stop: dict) -> bool:
    """`ray job stop` once the stage's shard is committed; False if the job ended first."""
    while cluster.status(job_id) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        folders = stage_folders(run_dir) if run_dir.exists() else {}
        if stop["stage"] in folders and (folders[stop["stage"]] / "_parts" / f"{stop['shard']}.json").exists():
            cluster.stop(job_id)
            return True
        time.sleep(0.2)
    return False


def run_with_faults(cluster, name: str, plan: dict, tmp_path: Path, args: list[str], env: dict,
                    entry: list[str] | None = None) -> tuple[Path, str]:
    """Submit the run with the plan until it succeeds (at most MAX_ATTEMPTS); the run dir and a summary."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    run_dir = tmp_path / "run"
    env = {**env, "FUSEGEN_FAULTS": str(plan_file)}
    states, stopped, job_id = [], False, ""
    for attempt in range(MAX_ATTEMPTS):
        job_id = f"{name}-{plan['seed']}-{attempt}-{tmp_path.name[-12:]}"
        submit(cluster, job_id, [*args, "--run-dir", str(run_dir)], env, entry)
        if plan["job_stop"] and not stopped:
            stopped = _stop_when_committed(cluster, job_id, run_dir, plan["job_stop"])
        states.append(cluster.wait(job_id))
        if states[-1] == "SUCCEEDED":
            break
    where = f"seed {plan['seed']}, plan {plan}, job states {states}"
    print(f"\n{name}: {where}")
    assert states[-1] == "SUCCEEDED", f"{where}:\n{cluster.logs(job_id)[-4000:]}"
    fired = [i for i in range(len(plan["faults"])) if Path(f"{plan_file}.fired-{i}").exists()]
    assert fired == list(range(len(plan["faults"]))) and (stopped or not plan["job_stop"]), f"fault never hit: {where}"
    return run_dir, where


def assert_equals_clean(run_dir: Path, clean_snap: dict, where: str) -> None:
    assert not ledger_problems(run_dir), f"{ledger_problems(run_dir)}: {where}"
    assert not leftovers(run_dir), f"{leftovers(run_dir)}: {where}"
    snap = snapshot(run_dir)
    for stage, expected in clean_snap.items():
        assert snap.get(stage) == expected, f"{stage} differs from the clean run: {where}"


def test_short_track_under_a_seeded_fault_resumes_to_the_clean_output(fault_seed, short_clean, ray_cluster,
                                                                     tiny_cache, tmp_path):
    _, clean_snap, shards = short_clean
    plan = draw_plan(fault_seed, shards, SHORT_STAGES, {})
    print(f"\nfault seed {fault_seed}: {json.dumps(plan)}  (replay: FUSEGEN_FAULT_SEEDS={fault_seed},)")
    args = short_track_args(tmp_path / "in", tiny_cache)
    run_dir, where = run_with_faults(ray_cluster, "fault-short", plan, tmp_path, args, {}, SHORT_ENTRY)
    assert_equals_clean(run_dir, clean_snap, where)


@long_variant("faults", "the whole GME track under faults")
def test_whole_gme_track_under_a_seeded_fault_resumes_to_the_clean_output(fault_seed, clean, ray_cluster,
                                                                         tiny_cache, llm_server, tmp_path):
    _, clean_snap, shards = clean
    plan = draw_plan(fault_seed, shards, STAGES, ACTORS)
    print(f"\nfault seed {fault_seed}: {json.dumps(plan)}  (replay: FUSEGEN_FAULT_SEEDS={fault_seed},)")
    args = job_args(tmp_path / "unused", tiny_cache, llm_server.base_url)
    args = args[:1] + args[3:]  # the run dir is given per attempt
    run_dir, where = run_with_faults(ray_cluster, "fault-gme", plan, tmp_path, args, {KEY_ENV: KEY})
    assert_equals_clean(run_dir, clean_snap, where)
