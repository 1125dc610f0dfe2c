"""Shards: the deterministic unit of work and of resume.

A stage's input is cut into shards of at most `shard_rows` rows, in a fixed order derived only from
the upstream output (file names and row counts), so a rerun plans the same shards with the same ids.
Each shard is read as one Ray block and committed as one part file; a committed shard is never redone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import pyarrow as pa

from pipeline.io.fs import RunFS
from pipeline.stage import SHARD, SRC


@dataclass(frozen=True)
class ShardSpec:
    """One shard: `rows` input rows read from `source` (a file) starting at `start`.

    `start`/`stop` are row offsets for Parquet sources and byte offsets for line-based sources.
    """

    shard: str
    source: str
    start: int
    stop: int
    rows: int
    kind: str = "parquet"
    # First line number (1-based) of the shard, for line-based sources, so rejects can cite lines.
    first_line: int = 0

    def to_item(self) -> dict:
        return asdict(self)


def plan_from_parts(run_fs: RunFS, parts_dir: str, shard_rows: int) -> list[ShardSpec]:
    """Cut the upstream stage's committed parts into shards, in file order."""
    specs: list[ShardSpec] = []
    for name in run_fs.listdir(parts_dir, ".parquet"):
        rel = f"{parts_dir}/{name}"
        n = run_fs.parquet_rows(rel)
        for start in range(0, n, shard_rows):
            stop = min(n, start + shard_rows)
            specs.append(ShardSpec(f"{len(specs):06d}", run_fs.path(rel), start, stop, stop - start))
    return specs


def read_row_range(source, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of a Parquet file, reading only the row groups that hold them."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(source)
    groups, first, offset = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset < stop and offset + n > start:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        return pf.schema_arrow.empty_table()
    return pf.read_row_groups(groups).slice(start - first, stop - start)


def read_parquet_shard(spec: ShardSpec, fs) -> pa.Table:
    with fs.open_input_file(spec.source) as f:
        return read_row_range(f, spec.start, spec.stop)


def tag_rows(table: pa.Table, shard: str) -> pa.Table:
    """Add the internal shard id and row index columns the collector uses to finish shards."""
    n = table.num_rows
    table = table.append_column(SHARD, pa.array([shard] * n, pa.string()))
    return table.append_column(SRC, pa.array(range(n), pa.int64()))


class ReadShards:
    """Ray Data UDF: one shard descriptor in, the shard's rows (tagged) out, as one block."""

    def __init__(self, root_uri: str, readers: dict[str, Callable[[ShardSpec, object], pa.Table]]):
        self.run_fs = RunFS.from_uri(root_uri)
        self.readers = readers

    def __call__(self, batch: dict) -> pa.Table:
        tables = []
        for i in range(len(batch["shard"])):
            spec = ShardSpec(**{k: _scalar(batch[k][i]) for k in ShardSpec.__dataclass_fields__})
            table = self.readers[spec.kind](spec, self.run_fs.fs)
            tables.append(tag_rows(table, spec.shard))
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _scalar(value):
    return value.item() if hasattr(value, "item") else value
