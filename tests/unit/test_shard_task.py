"""pipeline/runner.run_shard_task: a task stage's shard is read, transformed and written in one task,
with the same files and receipts as the three separate steps. No Ray."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.commit import covered_rows, write_pieces
from pipeline.io.shards import ShardSpec
from pipeline.runner import read_shards, run_shard_task
from pipeline.stage import FILTERED, OK, BlockStep, Resources, Stage, StageConfig, set_status


@dataclass(frozen=True)
class ShoutConfig(StageConfig):
    suffix: str = "!"


def shout(table: pa.Table, suffix: str) -> pa.Table:
    texts = table["text"].to_pylist()
    table = table.set_column(table.schema.get_field_index("text"), "text",
                             pa.array([t.upper() + suffix for t in texts], pa.string()))
    statuses = [FILTERED if i % 3 == 2 else OK for i in range(len(texts))]
    return set_status(table, statuses, ["filter:every_third" if s == FILTERED else "" for s in statuses])


class Shout(Stage):
    name = "shout"
    config_cls = ShoutConfig

    def task_steps(self) -> list[BlockStep]:
        return [BlockStep(shout, {"suffix": self.config.suffix})]


class Neither(Stage):
    name = "neither"
    config_cls = StageConfig


def _upstream(tmp_path) -> str:
    path = tmp_path / "up.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(10)], "text": [f"row {i}" for i in range(10)]}), path)
    return str(path)


def _batch(source: str) -> dict:
    spec = ShardSpec("000000", source, 2, 9, 7)
    return {k: [v] for k, v in spec.to_item().items()}


def _args(run) -> tuple[dict, dict]:
    (run / "s" / "_parts").mkdir(parents=True)
    read = {"source_uri": str(run), "readers": Shout(ShoutConfig(), None).readers()}
    write = {"run_uri": str(run), "stage": Shout(ShoutConfig(), None), "stage_dir": "s", "parts_dir": "s"}
    return read, write


def _files(run) -> dict[str, list[dict]]:
    return {str(p.relative_to(run)): pq.read_table(p).to_pylist() for p in sorted(run.rglob("*.parquet"))
            if p.name != "up.parquet"}


def test_one_task_writes_what_the_separate_steps_write(tmp_path):
    source = _upstream(tmp_path)
    fused_run, steps_run = tmp_path / "fused", tmp_path / "steps"
    read, write = _args(fused_run)
    fused = run_shard_task(_batch(source), read, Shout(ShoutConfig(), None).task_steps(), write)
    read, write = _args(steps_run)
    rows = read_shards(_batch(source), **read)
    separate = write_pieces(shout(rows, "!"), **write)
    assert fused.to_pylist() == separate.to_pylist()
    assert _files(fused_run) == _files(steps_run)
    (receipt,) = fused.to_pylist()
    assert (receipt["out"], receipt["filtered"], [src for src, _, _ in covered_rows(receipt)]) == (5, 2, list(range(7)))
    kept = pq.read_table(fused_run / receipt["parts"][0]).to_pylist()
    assert [r["text"] for r in kept] == ["ROW 2!", "ROW 3!", "ROW 5!", "ROW 6!", "ROW 8!"]


class RecordingDataset:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def map_batches(self, fn, **kwargs):
        self.calls.append({"fn": fn, **kwargs})
        return self


def test_apply_of_a_task_stage_maps_its_steps_with_its_resources():
    resources = Resources(num_cpus=0.5, custom={"io_node": 1})
    ds = Shout(ShoutConfig(resources=resources, suffix="?"), None).apply(RecordingDataset())
    (call,) = ds.calls
    assert (call["num_cpus"], call["resources"], call["fn_kwargs"]["steps"][0].kwargs) == (0.5, {"io_node": 1}, {"suffix": "?"})


def test_a_stage_without_apply_or_task_steps_says_so():
    with pytest.raises(NotImplementedError, match="Neither implements neither apply nor task_steps"):
        Neither(StageConfig(), None).apply(RecordingDataset())
