"""pipeline/stages/export.py: image references materialised from the store, and Parquet metadata that
makes `datasets` load image columns (single and lists) as PIL images."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.io.image_store import HF_IMAGE, IMAGE_REF, ImageStore
from pipeline.stage import REASON, STATUS
from pipeline.stages.export import (
    Export,
    ExportConfig,
    export_batch,
    hf_features_metadata,
    is_image_struct,
    portable_features,
)

IMAGE_TYPE = HF_IMAGE


@pytest.fixture
def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (9, 8), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore.from_uri(str(tmp_path / "run"))


@pytest.fixture
def rows(png, store) -> pa.Table:
    """Export input as a stage hands it over: image references into the run's store, internal columns."""
    ref = store.put(png, "png", 9, 8)
    other = store.put(png[:-1] + b"\x00", "png", 9, 8)
    return pa.table(
        {
            "id": ["a-q0", "b-q0"],
            "query_index": pa.array([0, 0], pa.int32()),
            "image": pa.array([ref, None], IMAGE_REF),
            "neg_images": pa.array([[ref, other], []], pa.list_(IMAGE_REF)),
            "llm_raw": ['{"pairs": []}', "{}"],
            STATUS: ["ok", "ok"],
            REASON: ["", ""],
        }
    )


def published(rows: pa.Table, store: ImageStore) -> pa.Table:
    """What the export worker writes: materialised, public columns, with the features metadata."""
    table = export_batch(rows, drop_raw=False, run_uri=store.run_fs.root).drop_columns([STATUS, REASON])
    return Export(ExportConfig(), None).finish_part(table)


@pytest.fixture
def offline_hf(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return tmp_path / "hf-cache"


def test_is_image_struct_matches_only_bytes_and_path_structs():
    other = pa.struct([("bytes", pa.binary()), ("name", pa.string())])
    assert (is_image_struct(IMAGE_TYPE), is_image_struct(other), is_image_struct(pa.binary())) == (
        True,
        False,
        False,
    )


def test_hf_features_metadata_marks_image_columns_as_image_features(rows, store):
    table = export_batch(rows, drop_raw=True, run_uri=store.run_fs.root)
    features = json.loads(hf_features_metadata(table.schema)[b"huggingface"])["info"]["features"]
    assert (features["image"], features["id"]) == ({"_type": "Image"}, {"dtype": "string", "_type": "Value"})


def test_finish_part_describes_every_written_column(rows, store):
    meta = published(rows, store).schema.metadata
    features = json.loads(meta[b"huggingface"])["info"]["features"]
    assert list(features) == ["id", "query_index", "image", "neg_images", "llm_raw"]
    assert features["neg_images"] == {"feature": {"_type": "Image"}, "_type": "Sequence"}


def test_portable_features_spell_lists_the_way_datasets_3_reads_them():
    written = {
        "ids": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
        "pair": {"feature": {"dtype": "int32", "_type": "Value"}, "length": 2, "_type": "List"},
        "spans": {"feature": {"start": {"dtype": "int32", "_type": "Value"}}, "_type": "List"},
        "nested": {"feature": {"feature": {"_type": "Image"}, "_type": "List"}, "_type": "List"},
        "big": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "LargeList"},
    }
    assert portable_features(written) == {
        "ids": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
        "pair": {"feature": {"dtype": "int32", "_type": "Value"}, "length": 2, "_type": "Sequence"},
        "spans": [{"start": {"dtype": "int32", "_type": "Value"}}],
        "nested": {"feature": {"feature": {"_type": "Image"}, "_type": "Sequence"}, "_type": "Sequence"},
        "big": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "LargeList"},
    }


def test_portable_features_read_back_as_the_features_datasets_wrote():
    """The installed `datasets` (5.x here) reads the portable spelling as the very Features it wrote
    (tests/unit/exporters/test_datasets_majors.py loads real files with 3.6 and 5.x)."""
    from datasets import Features

    schema = pa.schema([("ids", pa.list_(pa.string())), ("pair", pa.list_(pa.int32(), 2)),
                        ("spans", pa.list_(pa.struct([("start", pa.int32()), ("end", pa.int32())]))),
                        ("grid", pa.list_(pa.list_(pa.float32()))), ("big", pa.large_list(pa.string())),
                        ("meta", pa.struct([("tags", pa.list_(pa.string()))]))])
    features = Features.from_arrow_schema(schema)
    assert Features.from_dict(portable_features(features.to_dict())) == features


def test_export_materialises_references_as_the_stored_bytes(rows, store, png):
    table = export_batch(rows, drop_raw=True, run_uri=store.run_fs.root)
    first = table["image"][0].as_py()
    assert (first["bytes"], first["path"].endswith(".png"), table["image"][1].as_py()) == (png, True, None)
    assert [len(v) for v in table["neg_images"].to_pylist()] == [2, 0]


def test_datasets_loads_image_columns_and_image_lists_as_pil_images(rows, store, tmp_path, offline_hf):
    import datasets

    pq.write_table(published(rows, store), tmp_path / "train-000000.parquet")
    ds = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "train-000000.parquet"), split="train", cache_dir=str(offline_hf)
    )
    first = ds[0]["image"]
    assert (isinstance(first, Image.Image), first.size, ds[1]["image"]) == (True, (9, 8), None)
    assert [type(im) for im in ds[0]["neg_images"]] == [type(first)] * 2


def test_export_batch_drops_llm_raw_when_asked(rows):
    assert "llm_raw" not in export_batch(rows, drop_raw=True).column_names


def test_export_batch_keeps_llm_raw_when_not_asked(rows):
    assert export_batch(rows, drop_raw=False).column_names == rows.column_names


def test_repeated_references_and_missing_lists_materialise_row_by_row(store, png):
    ref = store.put(png, "png", 9, 8)
    table = pa.table({
        "id": ["a", "b", "c"],
        "image": pa.array([ref, ref, None], IMAGE_REF),
        "neg_images": pa.array([None, [ref, ref], [ref]], pa.list_(IMAGE_REF)),
    })
    out = export_batch(table, drop_raw=True, run_uri=store.run_fs.root).to_pylist()
    assert [r["image"]["bytes"] if r["image"] else None for r in out] == [png, png, None]
    assert [None if r["neg_images"] is None else len(r["neg_images"]) for r in out] == [None, 2, 1]
    assert out[1]["neg_images"][1] == {"bytes": png, "path": out[0]["image"]["path"]}
