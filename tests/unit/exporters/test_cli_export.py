"""`fusegen export` and `fusegen validate` as a user calls them (pipeline/cli.py main)."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.cli import main


@pytest.mark.parametrize("fmt", ["gme", "ms-swift", "mmeb", "mbeir"])
def test_export_then_validate_exits_zero_and_reports_the_rows(gme_run, tmp_path, capsys, fmt):
    out = tmp_path / "out"
    assert main(["export", str(gme_run), "--format", fmt, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert main(["validate", str(out)]) == 0
    assert f"export: {fmt} to {out}: train" in said and f"valid: {fmt} export" in capsys.readouterr().out


def test_export_options_reach_the_exporter(ragged_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(ragged_run), "--format", "ms-swift", "--out", str(out),
                 "--ms-swift-legacy", "--negatives", "1"]) == 0
    assert "negatives 1 per row; 1 row(s) dropped for fewer negatives" in capsys.readouterr().out
    assert "rejected_response" in json.loads((out / "train.jsonl").read_text().splitlines()[0])


def test_export_of_an_unfinished_run_exits_2_naming_the_stage(gme_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(gme_run, run)
    manifest = json.loads((run / "08_negatives" / "_manifest.json").read_text())
    (run / "08_negatives" / "_manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    assert main(["export", str(run), "--format", "mmeb", "--out", str(tmp_path / "out")]) == 2
    assert "stage negatives is 'running', not complete" in capsys.readouterr().err


def test_export_into_another_runs_folder_needs_force(gme_run, it2t_run, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["export", str(gme_run), "--format", "mbeir", "--out", out]) == 0
    assert main(["export", str(it2t_run), "--format", "mbeir", "--out", out]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(it2t_run), "--format", "mbeir", "--out", out, "--force"]) == 0


def test_validate_exits_1_listing_the_first_violations(gme_run, tmp_path, capsys):
    out = tmp_path / "out"
    main(["export", str(gme_run), "--format", "ms-swift", "--out", str(out)])
    lines = (out / "train.jsonl").read_text().splitlines()
    (out / "train.jsonl").write_text("\n".join(lines * 12) + "\n")
    capsys.readouterr()
    assert main(["validate", str(out), "--max-problems", "3"]) == 1
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith("invalid: ms-swift export") and len(said) == 5 and said[-1].startswith("  ... and ")
    assert "duplicate triplet id" in said[1]


def test_validate_of_a_folder_that_is_no_export_exits_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 2
    assert "not an export fusegen knows" in capsys.readouterr().err


def test_export_says_how_to_train_on_the_ms_swift_and_mmeb_folders(gme_run, tmp_path, capsys):
    assert main(["export", str(gme_run), "--format", "ms-swift", "--out", str(tmp_path / "swift")]) == 0
    said = capsys.readouterr().out
    assert f"ROOT_IMAGE_DIR={tmp_path / 'swift'} swift sft" in said and "qwen-vl-utils" in said
    assert "never from the JSONL's folder" in said
    assert main(["export", str(gme_run), "--format", "mmeb", "--out", str(tmp_path / "mmeb")]) == 0
    assert f"--dataset_config entry in {tmp_path / 'mmeb' / 'README.md'}" in capsys.readouterr().out
