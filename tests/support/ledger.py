"""The ledger of a finished run, checked against figures that do not come from the ledger itself.

`rows.in == out + filtered + rejected` alone compared a counter with itself while `in` was summed from
the three (fusegen issue 19). Here each stage's counts are checked against what it was planned (its
`input_rows` times its fan-out, or at least one unit per input row for a variable fan-out), against the
files it wrote (rows in the part files its markers name = `out`; rows in its reject files = `filtered +
rejected`), and against the stage before it (a stage was given exactly the rows the previous one kept).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.io.commit import committed_files
from pipeline.io.fs import RunFS


def file_rows(run_dir: Path, files: list[str]) -> int:
    return sum(pq.ParquetFile(run_dir / f).metadata.num_rows for f in files)


def check_ledgers(run_dir: Path, folders: tuple[str, ...] | list[str]) -> dict[str, dict]:
    """Assert the ledgers of `folders` (a run's stage folders, in run order, each stage reading the one
    before it); returns their manifests by folder."""
    run_fs = RunFS.from_uri(str(run_dir))
    manifests, before = {}, None
    for folder in folders:
        m = json.loads((run_dir / folder / "_manifest.json").read_text())
        rows, planned = m["rows"], m["input_rows"]
        assert m["status"] == "complete", folder
        if m["fanout"] is not None:
            assert rows["in"] == planned * m["fanout"], (folder, rows, planned, m["fanout"])
        else:
            assert rows["in"] >= planned, (folder, rows, planned)
        assert rows["in"] == rows["out"] + rows["filtered"] + rows["rejected"], (folder, rows)
        assert sum(m["reasons"].values()) == rows["filtered"] + rows["rejected"], (folder, m["reasons"], rows)
        parts, rejects = committed_files(run_fs, folder)
        assert (file_rows(run_dir, parts), file_rows(run_dir, rejects)) == (
            rows["out"], rows["filtered"] + rows["rejected"]), folder
        if before is not None:
            assert planned == before["rows"]["out"], (folder, planned, before["rows"])
        manifests[folder], before = m, m
    return manifests
