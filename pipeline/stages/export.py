"""export: write the last stage's rows as the run's output under RUN_DIR/export/data/.

Input: whatever the previous stage produced (id is required). Output: the same columns in Parquet
whose schema metadata carries Hugging Face `datasets` features, so image structs ({bytes, path})
load as PIL images with `datasets.load_dataset("parquet", data_dir=...)`. Later issues give this
stage the triplet schemas, exporters and the dataset card.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from pipeline.stage import Resources, Stage, StageConfig


@dataclass(frozen=True)
class ExportConfig(StageConfig):
    # Drop the LLM's raw text from the published rows (it stays in the stage folders for debugging).
    drop_raw: bool = True
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(shard_rows=5000, num_cpus=0.25))


def is_image_struct(tp: pa.DataType) -> bool:
    return pa.types.is_struct(tp) and {tp.field(i).name for i in range(tp.num_fields)} == {"bytes", "path"}


def hf_features_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    """Schema metadata `datasets` reads: image structs become Image() features."""
    from datasets import Features, Image

    plain = pa.schema([f for f in schema if not is_image_struct(f.type)])
    features = Features.from_arrow_schema(plain)
    ordered = {}
    for field in schema:
        ordered[field.name] = Image() if is_image_struct(field.type) else features[field.name]
    info = {"info": {"features": Features(ordered).to_dict()}}
    return {b"huggingface": json.dumps(info).encode()}


def export_batch(table: pa.Table, drop_raw: bool) -> pa.Table:
    raw = [c for c in ("llm_raw", "entities_raw") if c in table.column_names]
    if drop_raw and raw:
        table = table.drop_columns(raw)
    return table


class Export(Stage):
    name: ClassVar[str] = "export"
    config_cls: ClassVar[type] = ExportConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id",)
    output_columns: ClassVar[tuple[str, ...]] = ()
    # `datasets` and the Hub infer the split from the file name: data/train-*.parquet -> "train".
    part_prefix: ClassVar[str] = "train"

    def apply(self, ds):
        from pipeline.stage import OK, REASON, STATUS

        def mark(table: pa.Table) -> pa.Table:
            table = export_batch(table, self.config.drop_raw)
            n = table.num_rows
            table = table.append_column(STATUS, pa.array([OK] * n, pa.string()))
            return table.append_column(REASON, pa.array([""] * n, pa.string()))

        return ds.map_batches(mark, batch_size=None, batch_format="pyarrow", num_cpus=self.config.resources.num_cpus)

    def commit_hook(self, table: pa.Table, state: dict) -> pa.Table:
        public = pa.schema([f for f in table.schema if not f.name.startswith("_")])
        meta = hf_features_metadata(public)
        return table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
