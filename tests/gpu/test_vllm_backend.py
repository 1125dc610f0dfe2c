"""The vllm backend for real: doc2query and entities through `ray.data.llm` on a CUDA GPU.

Marked `gpu`: CI (`-m "not gpu"`) deselects it; on a GPU machine with `pip install -e .[gpu]` run
`pytest -m gpu`. It loads the tiny random Qwen2 (built locally, as everywhere in the tests) into vLLM
with guided JSON and checks what the CPU backends guarantee: a balanced ledger, JSON raw outputs
under the schema, and reasons on every dropped row.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.rundir import RunContext
from pipeline.runner import run_pipeline
from pipeline.settings import build_stages, load_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

VLLM = [
    "backend=vllm", "model=tiny:qwen2", "max_model_len=2048", "gpu_memory_utilization=0.3",
    "enforce_eager=true", "max_new_tokens=200",
]


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory, tiny_cache):
    import ray

    ray.init(address="local", include_dashboard=False)
    run_dir = tmp_path_factory.mktemp("vllm") / "run"
    sets = [f"cache_dir={tiny_cache}", "stages=[ingest, doc2query, entities, export]",
            "doc2query.max_query_chars=40", "doc2query.max_answer_chars=20"]
    sets += [f"{stage}.llm.{kv}" for stage in ("doc2query", "entities") for kv in VLLM]
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml", sets)
    ctx = RunContext.create(config, str(run_dir))
    results = {r.name: r.manifest for r in run_pipeline(ctx, build_stages(config, ctx))}
    yield run_dir, results
    ray.shutdown()


def test_vllm_stages_complete_with_a_balanced_ledger(gpu_run):
    _, manifests = gpu_run
    for name in ("doc2query", "entities"):
        rows = manifests[name]["rows"]
        assert manifests[name]["status"] == "complete"
        assert rows["in"] == rows["out"] + rows["filtered"] + rows["rejected"], name


def test_vllm_guided_output_is_json_except_where_truncated(gpu_run):
    run_dir, _ = gpu_run
    kept = pq.read_table(run_dir / "02_doc2query", columns=["llm_raw"]).to_pylist()
    assert kept and all(isinstance(json.loads(r["llm_raw"]), dict) for r in kept)
    rejects = pq.read_table(run_dir / "02_doc2query" / "_rejects").to_pylist() if (
        run_dir / "02_doc2query" / "_rejects"
    ).exists() else []
    assert all(r["reason"] and r["reason"] != "error:invalid_json" for r in rejects)


def test_vllm_rows_keep_their_input_columns(gpu_run):
    run_dir, _ = gpu_run
    kept = pq.read_table(run_dir / "02_doc2query").to_pylist()
    assert all(r["doc_id"] and r["text"] and r["id"].startswith(r["doc_id"]) for r in kept)
