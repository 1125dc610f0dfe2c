"""export: write the last stage's rows as the run's output under RUN_DIR/export/data/.

Input: whatever the previous stage produced (id is required). Output: the same columns in Parquet
whose schema metadata carries Hugging Face `datasets` features. Image references (io/image_store.py)
are materialised here, in the workers, as HF image structs `{bytes, path}` (lists of references as
lists of structs), so `datasets.load_dataset("parquet", data_dir=...)` yields PIL images, one or a
list per column. Later issues give this stage the triplet schemas, exporters and the dataset card.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.image_store import HF_IMAGE, ImageStore, file_name, is_image_ref, is_image_ref_list
from pipeline.stage import Resources, Stage, StageConfig, mark_all_ok


@dataclass(frozen=True)
class ExportConfig(StageConfig):
    # Drop the LLM's raw text from the published rows (it stays in the stage folders for debugging).
    drop_raw: bool = True
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(shard_rows=5000, num_cpus=0.25))


def is_image_struct(tp: pa.DataType) -> bool:
    return pa.types.is_struct(tp) and {tp.field(i).name for i in range(tp.num_fields)} == {"bytes", "path"}


def _is_image_list(tp: pa.DataType) -> bool:
    return (pa.types.is_list(tp) or pa.types.is_large_list(tp)) and is_image_struct(tp.value_type)


def hf_features_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    """Schema metadata `datasets` reads: image structs become Image(), lists of them List(Image())."""
    from datasets import Features, Image, List

    plain = pa.schema([f for f in schema if not is_image_struct(f.type) and not _is_image_list(f.type)])
    features = Features.from_arrow_schema(plain)
    ordered = {}
    for field in schema:
        if is_image_struct(field.type):
            ordered[field.name] = Image()
        elif _is_image_list(field.type):
            ordered[field.name] = List(Image())
        else:
            ordered[field.name] = features[field.name]
    info = {"info": {"features": Features(ordered).to_dict()}}
    return {b"huggingface": json.dumps(info).encode()}


def _hf_images(refs: pa.Array, store: ImageStore) -> pa.StructArray:
    """Reference structs -> HF image structs. Each distinct image is read once per block and built
    column-wise (a fan-out repeats references; Python dicts per row cost more than the reads)."""
    refs = refs.combine_chunks() if isinstance(refs, pa.ChunkedArray) else refs
    slot: dict[str, int] = {}
    blobs, names, take = [], [], []
    shas, formats = refs.field("sha256").to_pylist(), refs.field("format").to_pylist()
    for valid, sha, fmt in zip(refs.is_valid().to_pylist(), shas, formats):
        if not valid:
            take.append(None)
            continue
        if sha not in slot:
            ref = {"sha256": sha, "format": fmt}
            slot[sha] = len(blobs)
            blobs.append(store.get(ref))
            names.append(file_name(ref))
        take.append(slot[sha])
    distinct = pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), pa.array(names, pa.string())], fields=list(HF_IMAGE)
    )
    return distinct.take(pa.array(take, pa.int64()))


def materialise_images(table: pa.Table, store: ImageStore) -> pa.Table:
    """Image reference columns -> HF image structs with the stored bytes (the only place bytes move)."""
    for i, field in enumerate(table.schema):
        if is_image_ref(field.type):
            table = table.set_column(i, field.name, _hf_images(table[field.name], store))
        elif is_image_ref_list(field.type):
            lists = table[field.name].combine_chunks()
            offsets = pc.subtract(lists.offsets, lists.offsets[0])
            values = _hf_images(lists.flatten(), store)
            column = pa.ListArray.from_arrays(offsets, values, mask=lists.is_null())
            table = table.set_column(i, field.name, column)
    return table


def export_batch(table: pa.Table, drop_raw: bool, run_uri: str | None = None) -> pa.Table:
    raw = [c for c in ("llm_raw", "entities_raw") if c in table.column_names]
    if drop_raw and raw:
        table = table.drop_columns(raw)
    if run_uri is not None:
        table = materialise_images(table, ImageStore.from_uri(run_uri))
    return table


def _export_block(table: pa.Table, drop_raw: bool, run_uri: str) -> pa.Table:
    return mark_all_ok(export_batch(table, drop_raw, run_uri))


class Export(Stage):
    name: ClassVar[str] = "export"
    config_cls: ClassVar[type] = ExportConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id",)
    output_columns: ClassVar[tuple[str, ...]] = ()
    # `datasets` and the Hub infer the split from the file name: data/train-*.parquet -> "train".
    part_prefix: ClassVar[str] = "train"

    def apply(self, ds):
        return ds.map_batches(
            _export_block,
            fn_kwargs={"drop_raw": self.config.drop_raw, "run_uri": self.context.run_uri},
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=self.config.resources.num_cpus,
        )

    def finish_part(self, table: pa.Table) -> pa.Table:
        meta = hf_features_metadata(table.schema)
        return table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
