"""pipeline/status.py: `fusegen status` reads run.yaml and the stage manifests of a run directory."""

from __future__ import annotations

import pytest
import yaml

from pipeline.io.fs import RunFS
from pipeline.status import collect_manifests, format_status


@pytest.fixture
def run_fs(tmp_path) -> RunFS:
    """A run whose ingest is complete, doc2query is running and export has not started."""
    fs = RunFS.from_uri(str(tmp_path / "run"))
    fs.write_bytes(
        "run.yaml", yaml.safe_dump({"name": "demo", "stages": ["ingest", "doc2query", "export"]}).encode()
    )
    fs.write_json(
        "01_ingest/_manifest.json",
        {
            "stage": "ingest",
            "status": "complete",
            "fingerprint": "abc123",
            "rows": {"in": 30, "out": 24, "filtered": 2, "rejected": 4},
            "reasons": {"error:image_missing": 3, "filter:duplicate_text": 2, "error:nul_byte": 1},
            "seconds": 1.5,
        },
    )
    fs.write_json(
        "02_doc2query/_manifest.json",
        {
            "stage": "doc2query",
            "status": "running",
            "fingerprint": "def456",
            "rows": {},
            "shards": {"planned": 3, "done": 1},
        },
    )
    return fs


def row_of(text: str, stage: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(stage))


def test_status_lists_one_row_per_stage_in_order(run_fs):
    assert [m["stage"] for m in collect_manifests(run_fs)] == ["ingest", "doc2query", "export"]


def test_status_shows_a_complete_stage_with_its_row_counts(run_fs):
    assert row_of(format_status(run_fs), "ingest").split() == [
        "ingest",
        "complete",
        "30",
        "24",
        "2",
        "4",
        "1.5",
        "abc123",
    ]


def test_status_shows_shard_progress_of_a_running_stage(run_fs):
    assert "running 1/3" in row_of(format_status(run_fs), "doc2query")


def test_status_shows_a_stage_without_manifest_as_not_started(run_fs):
    assert row_of(format_status(run_fs), "export").split()[:3] == ["export", "not", "started"]


def test_status_shows_top_reasons_with_counts(run_fs):
    assert (
        "top reasons: error:image_missing (3), filter:duplicate_text (2), error:nul_byte (1)"
        in format_status(run_fs)
    )


def test_status_of_a_folder_without_run_yaml_says_it_is_not_a_run_dir(tmp_path):
    assert (
        format_status(RunFS.from_uri(str(tmp_path)))
        == f"{tmp_path}: no run.yaml here (not a fusegen run directory)"
    )


def test_status_reads_the_export_manifest_from_the_export_folder(run_fs):
    run_fs.write_json(
        "export/_manifest.json",
        {"stage": "export", "status": "complete", "rows": {"in": 5, "out": 5, "filtered": 0, "rejected": 0}},
    )
    assert row_of(format_status(run_fs), "export").split()[:4] == ["export", "complete", "5", "5"]
