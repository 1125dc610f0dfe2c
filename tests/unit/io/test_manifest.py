"""pipeline/io/manifest.py: fingerprints, the row ledger, config diffs and shard-marker sums."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import LedgerError
from pipeline.io.fs import RunFS
from pipeline.io.manifest import aggregate_markers, check_ledger, config_diff, fingerprint

CONFIG = {
    "queries_per_passage": 3,
    "llm": {"model": "tiny:qwen2", "temperature": 0.0},
    "resources": {"shard_rows": 16},
}


@pytest.fixture
def prompts(tmp_path) -> list[Path]:
    (tmp_path / "system.j2").write_text("You write questions.")
    (tmp_path / "user.j2").write_text("Passage: {{ text }}")
    return [tmp_path / "system.j2", tmp_path / "user.j2"]


def fp(prompts, config=CONFIG, upstream="up123", version="0.1.0", stage="doc2query") -> str:
    return fingerprint(stage, config, prompts, upstream, version)


def test_fingerprint_is_stable_for_the_same_inputs(prompts):
    assert (
        fp(prompts) == fp(list(reversed(prompts))) == fp(prompts, config=dict(reversed(list(CONFIG.items()))))
    )


@pytest.mark.parametrize(
    "change",
    [
        {"config": {**CONFIG, "queries_per_passage": 2}},
        {"config": {**CONFIG, "llm": {"model": "tiny:qwen2", "temperature": 0.1}}},
        {"upstream": "up124"},
        {"version": "0.2.0"},
        {"stage": "entities"},
    ],
    ids=["config", "nested-config", "upstream", "version", "stage"],
)
def test_fingerprint_changes_when_an_input_changes(prompts, change):
    assert fp(prompts, **change) != fp(prompts)


def test_fingerprint_changes_when_prompt_bytes_change(prompts):
    before = fp(prompts)
    prompts[1].write_text("Passage: {{ text }}\n")
    assert fp(prompts) != before


def test_fingerprint_is_a_short_hex_string(prompts):
    value = fp(prompts)
    assert len(value) == 24 and int(value, 16) >= 0


def test_check_ledger_accepts_balanced_rows():
    check_ledger("ingest", {"in": 10, "out": 6, "filtered": 1, "rejected": 3}, expected_in=10)


def test_check_ledger_raises_when_rows_are_lost():
    with pytest.raises(LedgerError, match="ingest: ledger mismatch: in=10 but out\\+filtered\\+rejected=9"):
        check_ledger("ingest", {"in": 10, "out": 6, "filtered": 0, "rejected": 3})


def test_check_ledger_raises_when_input_count_differs_from_expected():
    with pytest.raises(LedgerError, match="expected 12 input rows, accounted 10"):
        check_ledger("doc2query", {"in": 10, "out": 10, "filtered": 0, "rejected": 0}, expected_in=12)


def test_config_diff_lists_changed_dotted_keys():
    new = {**CONFIG, "queries_per_passage": 2, "llm": {"model": "other", "temperature": 0.0}, "few_shot": 1}
    assert config_diff(CONFIG, new) == [
        "few_shot: None -> 1",
        "llm.model: 'tiny:qwen2' -> 'other'",
        "queries_per_passage: 3 -> 2",
    ]


def test_config_diff_of_equal_configs_is_empty():
    assert config_diff(CONFIG, dict(CONFIG)) == []


def test_config_diff_without_an_old_config_says_all():
    assert config_diff(None, CONFIG) == ["(all)"]


def test_aggregate_markers_sums_rows_and_reasons(tmp_path):
    run_fs = RunFS.from_uri(str(tmp_path))
    run_fs.write_json(
        "01_ingest/_parts/000000.json",
        {
            "shard": "000000",
            "rows": {"in": 3, "out": 2, "filtered": 1, "rejected": 0},
            "reasons": {"filter:duplicate_text": 1},
        },
    )
    run_fs.write_json(
        "01_ingest/_parts/000001.json",
        {
            "shard": "000001",
            "rows": {"in": 2, "out": 0, "filtered": 1, "rejected": 1},
            "reasons": {"filter:duplicate_text": 1, "error:nul_byte": 1},
        },
    )
    rows, reasons, markers = aggregate_markers(run_fs, "01_ingest")
    assert (rows, dict(reasons), sorted(markers)) == (
        {"in": 5, "out": 2, "filtered": 2, "rejected": 1},
        {"filter:duplicate_text": 2, "error:nul_byte": 1},
        ["000000", "000001"],
    )
