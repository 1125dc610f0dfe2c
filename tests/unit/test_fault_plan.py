"""pipeline/faults.py: the declared fault hooks fire where the plan says, once in all processes, and
never without a plan."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from pipeline import faults
from pipeline.columns import SHARD
from pipeline.io.commit import remove_garbage
from pipeline.io.fs import RunFS


@pytest.fixture
def planned(tmp_path, monkeypatch):
    """Write a plan, point FUSEGEN_FAULTS at it and make the module parse it afresh."""

    def make(*items: dict):
        path = tmp_path / "plan.json"
        path.write_text(json.dumps({"seed": 1, "faults": list(items)}))
        monkeypatch.setenv(faults.ENV, str(path))
        monkeypatch.setattr(faults, "_plan", faults._UNSET)
        return path

    yield make
    monkeypatch.setattr(faults, "_plan", faults._UNSET)


def block(*shards: str) -> pa.Table:
    return pa.table({SHARD: list(shards), "id": [f"r{i}" for i in range(len(shards))]})


def test_without_a_plan_no_hook_reads_anything_or_fires(tmp_path, monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    monkeypatch.setattr(faults, "_plan", faults._UNSET)
    faults.batch("doc2query", block("000001"))
    RunFS.from_uri(str(tmp_path)).write_bytes("02_doc2query/part-000001.parquet", b"x")
    assert faults.plan() is None and not faults.active()


def test_a_raise_fires_on_its_stage_and_shard_only_and_only_once(planned):
    path = planned({"kind": "raise", "where": "doc2query", "shard": "000001"})
    faults.batch("doc2query", block("000000", "000000"))
    faults.batch("entities", block("000001"))
    with pytest.raises(faults.InjectedFault, match="doc2query shard 000001"):
        faults.batch("doc2query", block("000000", "000001"))
    # The retried batch (here, or in another process: the token is a file) gets through.
    faults.batch("doc2query", block("000001"))
    assert (path.parent / "plan.json.fired-0").exists()


def test_a_write_error_leaves_only_a_temporary_that_remove_garbage_sweeps(planned, tmp_path):
    planned({"kind": "write_error", "where": "doc2query", "shard": "000002"})
    run_fs = RunFS.from_uri(str(tmp_path / "run"))
    run_fs.write_parquet("02_doc2query/part-000001-000000-000.parquet", block("000001"))
    with pytest.raises(OSError, match="injected fault: write_error"):
        run_fs.write_parquet("02_doc2query/part-000002-000000-000.parquet", block("000002"))
    names = run_fs.list_files("02_doc2query")
    assert [n for n in names if n.endswith(".tmp")] and not run_fs.exists("02_doc2query/part-000002-000000-000.parquet")
    assert remove_garbage(run_fs, "02_doc2query", "02_doc2query") == 2  # the unmarked part and the temporary
    assert run_fs.list_files("02_doc2query") == []


def test_a_read_error_fails_the_read_of_a_matching_file_once(planned, tmp_path):
    planned({"kind": "read_error", "where": "ingest", "shard": ""})
    run_fs = RunFS.from_uri(str(tmp_path / "run"))
    run_fs.write_json("01_ingest/x.json", {"a": 1})
    with pytest.raises(OSError, match="injected fault: read_error"):
        run_fs.read_json("01_ingest/x.json")
    assert run_fs.read_json("01_ingest/x.json") == {"a": 1}


def test_kill_after_write_kills_the_process_with_the_file_in_place(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"faults": [{"kind": "kill_after_write", "where": "export/_parts",
                                            "shard": "000003.json"}]}))
    code = (
        "from pipeline.io.fs import RunFS\n"
        f"fs = RunFS.from_uri({str(tmp_path / 'run')!r})\n"
        "fs.write_json('export/_parts/000002.json', {})\n"
        "fs.write_json('export/_parts/000003.json', {})\n"
        "print('survived')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False,
                          env={**_env(), faults.ENV: str(plan)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == -9 and "survived" not in done.stdout
    assert (tmp_path / "run" / "export" / "_parts" / "000003.json").exists()


def test_an_actor_wrapper_checks_each_batch_before_the_model_sees_it(planned):
    planned({"kind": "raise", "where": "Model", "shard": "000004"})
    seen = []

    class Model:
        def __init__(self, scale: int) -> None:
            self.scale = scale

        def __call__(self, table):
            seen.append(table.num_rows * self.scale)
            return table

    fn = faults.FaultyFn(_fault_inner=Model, scale=2)
    fn(block("000003"))
    with pytest.raises(faults.InjectedFault):
        fn(block("000004"))
    assert seen == [2]


def test_an_unknown_kind_is_refused_naming_the_known_ones(planned):
    planned({"kind": "explode", "where": "x"})
    with pytest.raises(ValueError, match="unknown fault kind.*explode.*known: raise"):
        faults.plan()


def _env() -> dict:
    import os
    from pathlib import Path

    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
