"""Shards: the deterministic unit of work and of resume.

A stage's input is cut into shards of at most `shard_rows` rows, in a fixed order derived only from
the upstream output (file names and row counts), so a rerun plans the same shards with the same ids.
Each shard is read as one Ray block and committed as one part file; a committed shard is never redone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.columns import PARENT, SHARD, SRC
from pipeline.io.fs import RunFS


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


def plan_parts(run_fs: RunFS, parts: tuple[str, ...], shard_rows: int) -> list[ShardSpec]:
    """Cut the upstream stage's committed parts (full paths, in shard order) into shards."""
    specs: list[ShardSpec] = []
    for path in parts:
        with run_fs.fs.open_input_file(path) as f:
            n = pq.ParquetFile(f).metadata.num_rows
        for start in range(0, n, shard_rows):
            stop = min(n, start + shard_rows)
            specs.append(ShardSpec(f"{len(specs):06d}", path, start, stop, stop - start))
    return specs


def read_row_range(source, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of a Parquet file, reading only the row groups that hold them."""
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
    """Add the internal shard id, row index and parent id columns the committer uses to finish shards."""
    n = table.num_rows
    parent = table["id"].cast(pa.string()) if "id" in table.column_names else pa.nulls(n, pa.string())
    table = table.append_column(SHARD, pa.array([shard] * n, pa.string()))
    table = table.append_column(SRC, pa.array(range(n), pa.int64()))
    return table.append_column(PARENT, parent)
