"""samples/: the committed sample corpus is what its source data says, and ingest answers each line as
the source expects (`expect`), so the demo's and the e2e tests' counts come from the data, not from code."""

from __future__ import annotations

import pytest

from pipeline.config import to_dict
from pipeline.io.corpus import plan_corpus, read_jsonl_shard
from pipeline.io.dedup import FirstSeen
from pipeline.io.shards import tag_rows
from pipeline.stage import FILTERED, OK, REJECTED
from pipeline.stages.ingest import Ingest, IngestConfig, ingest_batch
from samples.corpus_source import SOURCE, build_jsonl, expected_ingest, expected_reasons, load_rows
from tests.support.ingest import INGEST_REASONS, commit_statuses

ROWS = load_rows()


@pytest.fixture(scope="module")
def ingested(repo_root, tmp_path_factory) -> list[tuple[str, str]]:
    """(status, reason) per line of the committed corpus: ingest_batch, then the dedup commit hook."""
    config = IngestConfig(path=str(repo_root / "samples" / "corpus" / "passages.jsonl"))
    stage, out = Ingest(config, None), []
    state = FirstSeen.local(stage.dedup)
    run_dir = tmp_path_factory.mktemp("run")
    for spec in plan_corpus(config.path, config.columns, config.resources.shard_rows):
        table = ingest_batch(tag_rows(read_jsonl_shard(spec, None), spec.shard), to_dict(config), str(run_dir))
        out += commit_statuses(stage, table, state)
    return out


def test_committed_passages_jsonl_is_built_from_the_source_data(repo_root):
    committed = (repo_root / "samples" / "corpus" / "passages.jsonl").read_bytes()
    assert committed == build_jsonl(ROWS), "rerun samples/make_sample_corpus.py after editing the source"


def test_every_expected_reason_is_one_ingest_gives():
    assert set(filter(None, expected_reasons(ROWS))) <= INGEST_REASONS


def test_ingest_answers_each_sample_line_as_its_source_entry_expects(ingested):
    expected = [
        (OK if not r else FILTERED if r.startswith("filter:") else REJECTED, r)
        for r in expected_reasons(ROWS)
    ]
    mismatches = [
        (line, got, want) for line, (got, want) in enumerate(zip(ingested, expected), 1) if got != want
    ]
    assert (len(ingested), mismatches) == (len(ROWS), [])


def test_expected_ingest_counts_add_up_to_the_lines():
    counts = expected_ingest(ROWS)
    assert counts["in"] == counts["out"] + counts["filtered"] + counts["rejected"] == len(ROWS)


def test_source_entry_with_an_unknown_key_is_an_error(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text(
        SOURCE.read_text(encoding="utf-8").replace("  title: Eiffel Tower", "  titel: Eiffel Tower", 1)
    )
    with pytest.raises(ValueError, match=r"entry 1: unknown keys \['titel'\]"):
        load_rows(bad)
