"""How an image pool table is cut into shards: rows, and bytes for images inline (no Ray)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.image_pool import PoolConfig, plan_pool
from pipeline.io.shards import ShardSpec

IMAGE = 300 * 1024  # bytes per inline image: three fit under 1 MB, four do not


def covered(specs: list[ShardSpec]) -> list[tuple[str, int]]:
    return [(s.source, row) for s in specs for row in range(s.start, s.stop)]


@pytest.mark.parametrize(("shard_rows", "shard_mb", "rows"), [(256, 1, [4, 4, 2]), (2, 1, [2, 2, 2, 2, 2]),
                                                             (256, 512, [10])])
def test_a_parquet_pool_with_inline_images_is_cut_by_rows_and_by_bytes(tmp_path, shard_rows, shard_mb, rows):
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(10)], "image": [os.urandom(IMAGE) for _ in range(10)],
                             "caption": ["c"] * 10}), path, row_group_size=3)
    specs = plan_pool(PoolConfig(path=str(path), shard_rows=shard_rows, shard_mb=shard_mb))
    # A shard ends on the row that reaches the cap (1 MB: the fourth 300-KB row).
    assert [s.rows for s in specs] == rows
    assert covered(specs) == [(str(path), i) for i in range(10)]
    assert {s.kind for s in specs} == {"pool_parquet"} and [s.shard for s in specs] == [f"{i:06d}" for i in range(len(rows))]


def test_a_jsonl_pool_is_cut_by_bytes_too_and_shard_ids_run_on_across_files(tmp_path):
    for name in ("a", "b"):
        lines = [json.dumps({"id": f"{name}{i}", "image": "x" * IMAGE}) for i in range(5)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    specs = plan_pool(PoolConfig(path=str(tmp_path), shard_mb=1))
    assert [(os.path.basename(s.source), s.rows) for s in specs] == [("a.jsonl", 4), ("a.jsonl", 1),
                                                                     ("b.jsonl", 4), ("b.jsonl", 1)]
    assert [s.shard for s in specs] == [f"{i:06d}" for i in range(4)] and {s.kind for s in specs} == {"pool_jsonl"}


def test_pool_shard_mb_must_be_positive():
    from pipeline.errors import PipelineConfigError

    with pytest.raises(PipelineConfigError, match="shard_mb"):
        PoolConfig(path="x", shard_mb=0)
