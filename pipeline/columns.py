"""Column names and the row-status helpers every stage, backend and the runner share.

Kept free of imports from the runner, the stages and the backends, so any of them can import it
without a cycle. Internal columns start with `_` and are dropped before a part is written (R22).
"""

from __future__ import annotations

import pyarrow as pa

# Set by the runner when it reads a shard: the shard id, the input row's index in the shard and the
# input row's `id` (every unit a stage emits for that row keeps it; rejects show it as `parent_id`).
SHARD, SRC, PARENT = "_shard", "_src", "_parent"
# Set by stages that emit several units per input row: the unit's index (`_k`) and, for a variable
# fan-out, how many units the input row produced in all (`_n`), so the runner knows when it is whole.
SLOT, NROWS = "_k", "_n"
STATUS, REASON = "_status", "_reason"
OK, FILTERED, REJECTED = "ok", "filtered", "rejected"
STATUSES = (OK, FILTERED, REJECTED)
# Set by a stage that writes its kept rows to several splits (export: train / validation): the split
# becomes the part file's name prefix, one file per (shard piece, split).
SPLIT = "_split"
# Set by a stage whose workers read local files the fingerprint cannot know in advance (ingest: the
# images its records name): per row, a JSON list of those files' identities (io/corpus.read_entry). The
# receipts carry them to the shard markers; the runner checks them again before it skips the stage.
READ = "_read"
INTERNAL = (SHARD, SRC, PARENT, NROWS, SLOT, STATUS, REASON, SPLIT, READ)


def status_columns(n: int, status: str = OK, reason: str = "") -> dict[str, list]:
    """Default `_status` / `_reason` values for `n` rows."""
    return {STATUS: [status] * n, REASON: [reason] * n}


def set_column(table: pa.Table, name: str, column) -> pa.Table:
    """Replace `name` in place when present, else append it."""
    if not isinstance(column, (pa.Array, pa.ChunkedArray)):
        column = pa.array(column)
    if name in table.column_names:
        return table.set_column(table.schema.get_field_index(name), name, column)
    return table.append_column(name, column)


def set_status(table: pa.Table, statuses: list[str], reasons: list[str]) -> pa.Table:
    """Set (or add) `_status` and `_reason` for every row: the one way stages mark rows."""
    if len(statuses) != table.num_rows or len(reasons) != table.num_rows:
        raise ValueError(f"set_status: {len(statuses)} statuses / {len(reasons)} reasons for {table.num_rows} rows")
    table = set_column(table, STATUS, pa.array(statuses, pa.string()))
    return set_column(table, REASON, pa.array([r or "" for r in reasons], pa.string()))


def mark_all_ok(table: pa.Table) -> pa.Table:
    """Every row kept (pass-through stages)."""
    cols = status_columns(table.num_rows)
    return set_status(table, cols[STATUS], cols[REASON])
