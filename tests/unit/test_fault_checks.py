"""tests/support/fault_runs.py: the comparisons the fault tests rest on can fail (STYLE R36). A finished
GME run written without Ray (tests/support/gme_run.py) against copies of it with one thing changed."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from tests.support.fault_runs import ledger_problems, leftovers, snapshot
from tests.support.gme_run import make_gme_run


@pytest.fixture
def runs(tmp_path):
    run = make_gme_run(tmp_path / "a")
    copy = tmp_path / "b"
    shutil.copytree(run, copy)
    return run, copy


def test_an_identical_copy_has_the_same_snapshot_and_nothing_wrong(runs):
    run, copy = runs
    assert snapshot(run) == snapshot(copy) and snapshot(run)["export"]["ids"]
    assert ledger_problems(copy) == [] and leftovers(copy) == []


def test_one_changed_value_in_an_exported_row_changes_the_stage_hash(runs):
    run, copy = runs
    path = min((copy / "export" / "data").glob("*.parquet"))
    table = pq.read_table(path)
    column = table.column_names.index("query_text") if "query_text" in table.column_names else 0
    values = table.column(column).to_pylist()
    values[0] = f"{values[0]}!"
    pq.write_table(table.set_column(column, table.field(column), [values]), path)
    before, after = snapshot(run)["export"], snapshot(copy)["export"]
    assert before["ids"] == after["ids"] and before["kept_hash"] != after["kept_hash"]


def test_a_stored_image_changed_or_a_temporary_left_is_caught(runs):
    run, copy = runs
    image = next(p for p in (copy / "_images").rglob("*.*"))
    image.write_bytes(image.read_bytes() + b"\0")
    (copy / "export" / ".part-x.tmp").write_bytes(b"")
    assert snapshot(run)["_images"] != snapshot(copy)["_images"]
    assert leftovers(copy) == [str(copy / "export" / ".part-x.tmp")]


def test_an_unbalanced_ledger_is_reported(runs):
    _, copy = runs
    path = copy / "export" / "_manifest.json"
    manifest = json.loads(path.read_text())
    manifest["rows"]["in"] += 1
    path.write_text(json.dumps(manifest))
    assert ledger_problems(copy) and "export" in ledger_problems(copy)[0]
