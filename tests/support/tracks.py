"""A test track proving the registry's shape: one stage class under two config sections.

`Tag` adds a column named by its config with its config's value, and with `fanout: k` emits k units
per input row (a variable fan-out: rows whose text holds "SKIP" emit one filtered unit instead).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from pipeline.columns import NROWS, SLOT, set_status
from pipeline.stage import Resources, Stage, StageConfig, glue_map
from pipeline.stages.export import Export
from pipeline.stages.ingest import Ingest
from pipeline.tracks import register_track


@dataclass(frozen=True)
class TagConfig(StageConfig):
    column: str = "tag"
    value: str = "x"
    fanout: int = 1
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(shard_rows=4))


def tag_block(table: pa.Table, column: str, value: str, fanout: int) -> pa.Table:
    texts = table["text"].to_pylist()
    take, slots, totals, statuses, reasons = [], [], [], [], []
    for i, text in enumerate(texts):
        k = 1 if "SKIP" in text else fanout
        for slot in range(k):
            take.append(i)
            slots.append(slot)
            totals.append(k)
            statuses.append("filtered" if "SKIP" in text else "ok")
            reasons.append("filter:skip" if "SKIP" in text else "")
    out = table.take(pa.array(take, pa.int64()))
    ids = [f"{rid}-{column}{s}" for rid, s in zip(out["id"].to_pylist(), slots)]
    out = out.set_column(out.schema.get_field_index("id"), "id", pa.array(ids, pa.string()))
    out = out.append_column(column, pa.array([value] * len(take), pa.string()))
    out = out.append_column(SLOT, pa.array(slots, pa.int32())).append_column(NROWS, pa.array(totals, pa.int32()))
    return set_status(out, statuses, reasons)


class Tag(Stage):
    name: ClassVar[str] = "tag"
    config_cls: ClassVar[type] = TagConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id", "text")

    @property
    def fanout(self) -> int | None:
        return None

    def apply(self, ds):
        cfg = self.config
        return glue_map(ds, tag_block, fn_kwargs={"column": cfg.column, "value": cfg.value, "fanout": cfg.fanout})


TRACK = "test-two-tags"
register_track(TRACK, (("ingest", Ingest), ("tag_a", Tag), ("tag_b", Tag), ("export", Export)))
