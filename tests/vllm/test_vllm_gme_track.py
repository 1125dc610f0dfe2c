"""The GME track with GME through vLLM for real: `fusegen run configs/vllm-cpu.yaml` as users run it, with
gme_score, negatives and their shared passage pool on `gme.backend: vllm` (vLLM's pooling runner through
`ray.data.llm`, GME's sequential positions) on the tiny GME.

doc2query and entities are answered by a scripted OpenAI-compatible server on 127.0.0.1 (the openai
backend), so real queries with a masked entity reach the GME stages; their vLLM path is
test_vllm_stages.py's. Six sample passages with their own images (one cut short, which ingest rejects)
and one without: images keeps the passages' own images.

One clean run serves most assertions. The same run dir rerun with `gme.backend: transformers` reruns only
the GME stages (their fingerprint changed) and must give the same funnel and the same scores to float
noise. Under `pytest -m faults`, a run killed after gme_score's first committed shard, then resumed,
must equal the clean run.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import long_variant
from tests.support.grounded_llm import GroundedLLM
from tests.support.openai_server import OpenAIServer
from tests.vllm.tiny_vl import torchvision_error

pytestmark = pytest.mark.skipif(bool(torchvision_error()), reason=torchvision_error() or "-")

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "vllm-cpu.yaml")
DOCS = ["eiffel-tower", "starry-night", "giant-panda", "sagrada-familia", "golden-gate-bridge", "bad-img-truncated"]
TEXT_ONLY = "great-wall"
GME_STAGES = ("05_gme_score", "06_negatives")
# GME scores (stage columns, and export's `scores` struct): equal to float noise only.
FLOATS = ("gme_pos_score", "neg_scores", "neg_pos_score", "scores")


@pytest.fixture(scope="module")
def server(fusegen):
    fusegen.env["FUSEGEN_TEST_KEY"] = "sk-local-test"
    with OpenAIServer(default=GroundedLLM()) as srv:
        yield srv


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    samples = REPO / "samples" / "corpus"
    rows = {}
    # The sample corpus holds deliberately broken lines (bad UTF-8, bad JSON): skipped here.
    for line in (samples / "passages.jsonl").read_bytes().splitlines():
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("doc_id") in (*DOCS, TEXT_ONLY):
            rows.setdefault(row["doc_id"], row)  # the first: the sample has a later image-less duplicate
    assert set(rows) == {*DOCS, TEXT_ONLY} and "image" not in rows[TEXT_ONLY]
    (root / "images").symlink_to(samples / "images")
    path = root / "passages.jsonl"
    path.write_text("".join(json.dumps(rows[d]) + "\n" for d in (*DOCS, TEXT_ONLY)))
    return path


def _args(run_dir: Path, corpus: Path, cache: Path, server: OpenAIServer, *extra: str) -> list[str]:
    served = [
        f"{stage}.llm.{k}={v}"
        for stage in ("doc2query", "entities")
        for k, v in (("backend", "openai"), ("model", "served"), ("base_url", server.base_url),
                     ("api_key_env", "FUSEGEN_TEST_KEY"), ("retry_backoff_s", 0.01))
    ]
    sets = [
        f"cache_dir={cache}", f"ingest.path={corpus}", *served, "doc2query.queries_per_passage=2",
        "doc2query.few_shot=0", "entities.few_shot=0", "entities.repair=none",
        "gme_score.resources.shard_rows=4", "negatives.resources.shard_rows=4", "negatives.search_k=6",
        *extra,
    ]
    return ["run", CONFIG, "--run-dir", str(run_dir), *[a for s in sets for a in ("--set", s)]]


def _manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "_manifest.json").read_text())


def _rows(folder: Path) -> list[dict]:
    rows = [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: r["id"])


def _assert_same_rows(got_dir: Path, want_dir: Path) -> None:
    """Same rows (ids, every column), the GME scores equal to float noise (two engines, or two batchings)."""
    got, want = _rows(got_dir), _rows(want_dir)
    assert [r["id"] for r in got] == [r["id"] for r in want], got_dir
    for x, y in zip(got, want):
        for name in FLOATS:
            a, b = x.get(name), y.get(name)
            if name == "scores" and a is not None and b is not None:
                assert {k: v for k, v in a.items() if k not in ("gme_pos", "gme_negs")} == {
                    k: v for k, v in b.items() if k not in ("gme_pos", "gme_negs")
                }, (got_dir, x["id"])
                a, b = [a["gme_pos"], *a["gme_negs"]], [b["gme_pos"], *b["gme_negs"]]
            if a is not None or b is not None:
                assert np.allclose(a, b, atol=1e-5), (got_dir, x["id"], name)
        assert {k: v for k, v in x.items() if k not in FLOATS} == {k: v for k, v in y.items() if k not in FLOATS}, (
            got_dir,
            x["id"],
        )


@pytest.fixture(scope="module")
def clean_run(fusegen, corpus, tiny_cache, server, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("clean") / "run"
    done = fusegen.run(_args(run_dir, corpus, tiny_cache, server), run_dir.parent / "log.txt", timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:]
    return run_dir


@pytest.fixture(scope="module")
def transformers_run(fusegen, clean_run, corpus, tiny_cache, server) -> Path:
    run_dir = clean_run.parent.parent / "transformers-run"
    shutil.copytree(clean_run, run_dir, symlinks=True)
    sets = ("gme_score.gme.backend=transformers", "negatives.gme.backend=transformers")
    done = fusegen.run(_args(run_dir, corpus, tiny_cache, server, *sets), run_dir.parent / "tf-log.txt", timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:]
    return run_dir


def test_the_gme_stages_run_on_vllm_with_balanced_ledgers(clean_run):
    for stage in (*GME_STAGES, "export"):
        manifest = _manifest(clean_run, stage)
        rows = manifest["rows"]
        assert manifest["status"] == "complete", stage
        assert rows["in"] == rows["out"] + rows["filtered"] + rows["rejected"], stage
    for stage in GME_STAGES:
        assert _manifest(clean_run, stage)["models"]["gme"].endswith("via vllm"), stage
    # Real work reached them: fused queries scored and mined, triplets exported.
    assert _manifest(clean_run, "05_gme_score")["rows"]["out"] >= 4
    assert _manifest(clean_run, "06_negatives")["rows"]["out"] >= 4
    assert _rows(clean_run / "export" / "data")


def test_scores_and_negatives_are_gme_vectors_from_the_pool(clean_run):
    scored = _rows(clean_run / "05_gme_score")
    mined = _rows(clean_run / "06_negatives")
    assert scored and all(-1.0 <= r["gme_pos_score"] <= 1.0 for r in scored)
    assert all(r["gme_pos_rank"] is None or 1 <= r["gme_pos_rank"] <= 5 for r in scored)
    for row in mined:
        # Best first, never the positive's own passage, and the positive's score is the one gme_score gave.
        assert row["neg_scores"] == sorted(row["neg_scores"], reverse=True), row["id"]
        assert row["doc_id"] not in row["neg_doc_ids"], row["id"]
    pos = {r["id"]: r["gme_pos_score"] for r in scored}
    assert all(abs(r["neg_pos_score"] - pos[r["id"]]) < 1e-5 for r in mined if r["id"] in pos)


def test_the_vllm_backend_gives_the_transformers_funnel_and_scores(clean_run, transformers_run):
    for stage in GME_STAGES:
        got, want = _manifest(clean_run, stage), _manifest(transformers_run, stage)
        assert (got["rows"], got["reasons"]) == (want["rows"], want["reasons"]), stage
        assert "via" not in want["models"]["gme"], stage
        for folder in (stage, f"{stage}/_rejects"):
            _assert_same_rows(clean_run / folder, transformers_run / folder)


@long_variant("faults", "killing a GME-on-vLLM run after gme_score's first shard")
def test_kill_after_the_first_gme_score_shard_then_resume_equals_the_clean_run(
    fusegen, clean_run, corpus, tiny_cache, server, tmp_path
):
    """The long variant: in the default suite tests/vllm/test_vllm_vision_resume.py kills a run on the
    same vLLM engine path (ray.data.llm, one engine stage) after a shard and compares its resume."""
    run_dir = tmp_path / "run"
    args = _args(run_dir, corpus, tiny_cache, server)
    proc = fusegen.start(args, tmp_path / "killed.txt")
    marks = run_dir / "05_gme_score" / "_parts"
    deadline = time.monotonic() + 900
    while not (marks.exists() and any(marks.glob("*.json"))):
        assert proc.poll() is None, (tmp_path / "killed.txt").read_text()[-4000:]
        assert time.monotonic() < deadline, "gme_score committed no shard in 900 s"
        time.sleep(0.05)
    fusegen.kill(proc)
    negatives = run_dir / "06_negatives" / "_manifest.json"
    assert not negatives.exists() or json.loads(negatives.read_text())["status"] != "complete"
    resumed = fusegen.run(args, tmp_path / "resumed.txt", timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    for stage in GME_STAGES:
        for folder in (stage, f"{stage}/_rejects"):
            _assert_same_rows(run_dir / folder, clean_run / folder)
    _assert_same_rows(run_dir / "export" / "data", clean_run / "export" / "data")
