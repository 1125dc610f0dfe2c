"""Hostile inputs (tests/support/hostile.py) through real runs on an embedded Ray: every bad row is a reject
with an `error:` reason, every valid-but-awkward row and every good row is kept, and the run completes.

Short variant (the default suite): the mixed corpus through ingest and export, and each whole-file Parquet
kind alone. Long variant (`pytest -m badinput`): the mixed corpus through the whole GME track (the LLM
stages on a local OpenAI-compatible server), where every good row must end in the final funnel, kept or
filtered for a normal reason, never with an `error:`.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.errors import PipelineError
from pipeline.rundir import RunContext
from pipeline.runner import run_pipeline
from pipeline.settings import build_stages, load_config
from samples.corpus_source import is_good, load_rows
from tests.conftest import long_variant
from tests.support.fault_runs import KEY, KEY_ENV, ledger_problems, stage_folders
from tests.support.grounded_llm import GroundedLLM
from tests.support.hostile import FILE_KINDS, REJECT, write_file_kind, write_mixed_corpus
from tests.support.openai_server import OpenAIServer

pytestmark = [pytest.mark.e2e, pytest.mark.badinput, pytest.mark.usefixtures("embedded_ray")]
REPO = Path(__file__).resolve().parents[2]
SHORT = ["stages=[ingest, export]", "export.schema=passthrough"]


def run(run_dir: Path, sets: list[str]):
    config = load_config(REPO / "configs" / "demo.yaml", sets)
    ctx = RunContext.create(config, str(run_dir))
    return run_pipeline(ctx, build_stages(config, ctx))


def good_sample_rows(n: int) -> list[dict]:
    return [r for r in load_rows() if is_good(r) and "line" not in r][:n]


def rows_of(folder: Path) -> list[dict]:
    return [r for p in sorted(folder.glob("*.parquet")) for r in pq.read_table(p).to_pylist()] if folder.exists() else []


def ingest_verdicts(run_dir: Path, corpus: dict) -> list[str]:
    """What went wrong: hostile rows not rejected with an error, awkward or good rows not kept."""
    ingest = stage_folders(run_dir)["ingest"]
    kept = {r["source"]: r for r in rows_of(ingest)}
    rejected = {r["source"]: r["reason"] for r in rows_of(ingest / "_rejects")}
    wrong = []
    for source, (kind, expected) in corpus["hostile"].items():
        if expected == REJECT and not rejected.get(source, "").startswith("error:"):
            wrong.append(f"{kind} ({source}): expected a reject with an error: reason, got "
                         f"{'kept' if source in kept else rejected.get(source, 'nothing')}")
        if expected != REJECT and source not in kept:
            wrong.append(f"{kind} ({source}): expected kept, got {rejected.get(source, 'nothing')}")
    kept_ids = {r["doc_id"] for r in kept.values()}
    wrong += [f"good row {d} not kept by ingest" for d in corpus["good"] if d not in kept_ids]
    return wrong


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_cache):
    root = tmp_path_factory.mktemp("hostile")
    corpus = write_mixed_corpus(root / "corpus", good_sample_rows(6), REPO / "samples" / "corpus")
    run(root / "run", [f"cache_dir={tiny_cache}", f"ingest.path={root / 'corpus'}", *SHORT])
    return root / "run", corpus


def test_every_hostile_row_is_rejected_with_an_error_and_every_good_row_kept(short_run):
    run_dir, corpus = short_run
    assert len(corpus["hostile"]) >= 30
    assert ingest_verdicts(run_dir, corpus) == []


def test_a_hostile_corpus_run_completes_with_balanced_ledgers_and_good_rows_exported(short_run):
    run_dir, corpus = short_run
    assert ledger_problems(run_dir) == []
    exported = {r["doc_id"] for r in rows_of(run_dir / "export" / "data")}
    assert set(corpus["good"]) <= exported
    ingest = json.loads((stage_folders(run_dir)["ingest"] / "_manifest.json").read_text())
    assert ingest["rows"]["in"] == len(corpus["good"]) + len(corpus["hostile"])


@pytest.mark.parametrize("kind", sorted(FILE_KINDS))
def test_a_hostile_parquet_file_stops_the_run_naming_it_or_ingests_every_row(kind, tmp_path, tiny_cache):
    path = write_file_kind(tmp_path / "corpus", kind)
    sets = [f"cache_dir={tiny_cache}", f"ingest.path={path}", *SHORT]
    if FILE_KINDS[kind][0] == "error":
        with pytest.raises(PipelineError) as err:
            run(tmp_path / "run", sets)
        assert str(path) in str(err.value) and str(err.value).startswith("ingest:"), str(err.value)
        assert not list((tmp_path / "run").rglob("part-*.parquet")), "a refused input left stage output"
        return
    run(tmp_path / "run", sets)
    assert ledger_problems(tmp_path / "run") == []
    ingest = json.loads((stage_folders(tmp_path / "run")["ingest"] / "_manifest.json").read_text())
    assert ingest["rows"]["in"] == pq.ParquetFile(path).metadata.num_rows


def duplicate_corpus(kind: str) -> list[dict]:
    """Corpora that stress ingest's dedup across 37-row shards (the rule: io/dedup.py)."""
    rng = random.Random(kind)
    if kind == "one_text":
        return [{"doc_id": f"d{i}", "text": "The same passage, again."} for i in range(300)]
    if kind == "ids_cycle":
        return [{"doc_id": f"d{i % 20}", "text": f"Passage {i} about things."} for i in range(300)]
    if kind == "case_space_no_ids":  # texts equal after normalising (case, spaces); some rows without an id
        rows = []
        for _ in range(400):
            t = rng.randrange(60)
            row = {"text": f"  Passage   {t} on the river. " if rng.random() < .5 else f"PASSAGE {t} ON THE RIVER."}
            if rng.random() < .9:
                row["doc_id"] = f"d{rng.randrange(80)}"
            rows.append(row)
        return rows
    # comebacks: B reuses an earlier shard's id with a new text, C repeats B's text under a new id. Alone,
    # B's shard keeps B and holds C; in shard order B is a reused id and C is the first of its text.
    rows = [{"doc_id": f"a{j}", "text": f"P{j}"} for j in range(100)]
    for j in range(100):
        rows += [{"doc_id": f"a{j}", "text": f"Q{j}"}, {"doc_id": f"c{j}", "text": f"Q{j}"}]
    return rows


def dedup_rule(rows: list[dict]) -> tuple[list[str], list[tuple[str, str]]]:
    """The rule in plain Python over the whole corpus: (kept doc ids in order, sorted (doc id, reason))."""
    seen_text, seen_id, kept, dropped = set(), set(), [], []
    for row in rows:
        text = " ".join(row["text"].split()).casefold()
        doc_id = row.get("doc_id") or f"h{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        if text in seen_text:
            dropped.append((doc_id, "filter:duplicate_text"))
        elif doc_id in seen_id:
            dropped.append((doc_id, "error:duplicate_doc_id"))
        else:
            seen_text.add(text)
            seen_id.add(doc_id)
            kept.append(doc_id)
    return kept, sorted(dropped)


@pytest.mark.parametrize("kind", ["one_text", "ids_cycle", "case_space_no_ids", "comebacks"])
def test_duplicate_corpora_keep_in_order_what_the_dedup_rule_keeps(kind, tmp_path, tiny_cache):
    rows = duplicate_corpus(kind)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(tmp_path / "run", [f"cache_dir={tiny_cache}", f"ingest.path={corpus}", "ingest.resources.shard_rows=37",
                           *SHORT])
    folder = stage_folders(tmp_path / "run")["ingest"]
    parts = [p for m in sorted((folder / "_parts").glob("*.json")) for p in json.loads(m.read_text())["files"]["parts"]]
    kept = [d for p in parts for d in pq.read_table(tmp_path / "run" / p, columns=["doc_id"])["doc_id"].to_pylist()]
    dropped = sorted((r["doc_id"], r["reason"]) for r in rows_of(folder / "_rejects"))
    assert (kept, dropped) == dedup_rule(rows)
    assert [r["doc_id"] for r in rows_of(tmp_path / "run" / "export" / "data")] == kept
    assert ledger_problems(tmp_path / "run") == [] and not list((folder / "_held").glob("*"))


@pytest.fixture(scope="module")
def track_run(tmp_path_factory, tiny_cache):
    root = tmp_path_factory.mktemp("hostile-track")
    corpus = write_mixed_corpus(root / "corpus", good_sample_rows(10), REPO / "samples" / "corpus")
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, KEY)
    with OpenAIServer(default=GroundedLLM()) as server:
        url = server.base_url
        run(root / "run", [
            f"cache_dir={tiny_cache}", f"ingest.path={root / 'corpus'}", "consistency.top_k=10",
            "doc2query.llm.backend=openai", "doc2query.llm.model=served-qwen", f"doc2query.llm.base_url={url}",
            f"doc2query.llm.api_key_env={KEY_ENV}", "entities.llm.backend=openai", "entities.llm.model=served-qwen",
            f"entities.llm.base_url={url}", f"entities.llm.api_key_env={KEY_ENV}", "entities.repair=none",
        ])
    mp.undo()
    return root / "run", corpus


@long_variant("badinput", "the whole track over hostile inputs")
def test_the_whole_track_over_hostile_inputs_keeps_every_good_row_in_the_funnel(track_run):
    run_dir, corpus = track_run
    assert ledger_problems(run_dir) == []
    assert ingest_verdicts(run_dir, corpus) == []
    ingest = stage_folders(run_dir)["ingest"]
    survivors = {r["doc_id"] for r in rows_of(ingest)}
    exported = {r["doc_id"] for r in rows_of(run_dir / "export" / "data")}
    filtered, errors = set(), []
    for stage, folder in stage_folders(run_dir).items():
        for r in rows_of(folder / "_rejects"):
            if stage != "ingest" and r.get("doc_id") in survivors:
                (errors.append(f"{stage}: {r['doc_id']} {r['reason']}") if r["reason"].startswith("error:")
                 else filtered.add(r["doc_id"]))
    assert errors == [], "rows ingest kept met an error later"
    assert survivors <= exported | filtered, f"lost: {sorted(survivors - exported - filtered)}"
    assert exported, "no row reached export"
