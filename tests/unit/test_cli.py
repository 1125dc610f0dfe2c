"""pipeline/cli.py: the closing `output:` line names the dataset, or the stage that dropped every row."""

from __future__ import annotations

from types import SimpleNamespace

from pipeline.cli import output_line
from pipeline.io.fs import RunFS
from pipeline.runner import StageResult


def results(*outs: int) -> tuple[list, list[StageResult]]:
    names = ["ingest", "doc2query", "entities", "export"][: len(outs)]
    stages = [SimpleNamespace(name=n) for n in names]
    return stages, [StageResult(n, "run", {"rows": {"out": o}}) for n, o in zip(names, outs)]


def test_output_line_names_the_export_data_folder_when_rows_were_exported(tmp_path):
    run_fs = RunFS.from_uri(str(tmp_path / "run"))
    assert output_line(run_fs, *results(40, 55, 12, 12)) == f"output: {tmp_path}/run/export/data"


def test_output_line_names_the_first_stage_that_kept_no_row_and_its_rejects(tmp_path):
    run_fs = RunFS.from_uri(str(tmp_path / "run"))
    line = output_line(run_fs, *results(40, 55, 0, 0))
    assert line.startswith("output: none. No row got past the entities stage")
    assert f"{tmp_path}/run/03_entities/_rejects" in line


def test_a_reader_that_goes_away_ends_the_command_quietly(repo_root):
    """`fusegen stages | head -1`: the pipe closes early; no BrokenPipeError traceback, exit 1."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "stages"], cwd=repo_root, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert (done.returncode, "Traceback" in done.stderr, "BrokenPipe" in done.stderr) == (1, False, False)
