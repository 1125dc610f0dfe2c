"""Two runs submitted at the same time with one `--index-dir`: the shared pool index is built once (the
second run waits for the first's index lock, then reuses it) and both runs end with the same rows.

Long variant: runs under `pytest -m faults` only (two text-track runs side by side, ~2 runs' time); the
index lock itself is tested with real processes in tests/unit/io/test_locks.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import long_variant
from tests.support.fault_runs import ledger_problems

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


def text_track(run_dir: Path, index_dir: Path, cache: Path) -> list[str]:
    sets = [
        "stages=[ingest, doc2query, consistency, export]", "export.schema=passthrough",
        "doc2query.llm.model=tiny:qwen2", f"cache_dir={cache}", "doc2query.llm.max_new_tokens=120",
        "doc2query.max_query_chars=40", "doc2query.max_answer_chars=20", "consistency.top_k=40",
        "doc2query.resources.concurrency=1",
    ]
    return ["configs/demo.yaml", "--run-dir", str(run_dir), "--index-dir", str(index_dir),
            *[x for s in sets for x in ("--set", s)]]


@long_variant("faults", "two runs sharing an index dir at once")
def test_two_runs_sharing_an_index_dir_at_once_build_it_once_and_agree(ray_cluster, tmp_path, tiny_cache):
    shared = tmp_path / "indexes"
    for name in ("one", "two"):
        ray_cluster.submit(f"shared-{name}-{tmp_path.name[-12:]}", text_track(tmp_path / name, shared, tiny_cache))
    states = {name: ray_cluster.wait(f"shared-{name}-{tmp_path.name[-12:]}") for name in ("one", "two")}
    assert set(states.values()) == {"SUCCEEDED"}, states
    (index,) = shared.glob("text-*")
    manifest = json.loads((index / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and (index / "index.faiss").exists()
    assert not list(shared.rglob(".*.tmp"))
    rows = {}
    for name in ("one", "two"):
        assert ledger_problems(tmp_path / name) == []
        assert not (tmp_path / name / "_index").exists()
        table = pq.read_table(tmp_path / name / "export" / "data", columns=["id", "query", "consistency_rank"])
        rows[name] = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert rows["one"] == rows["two"] and rows["one"]
