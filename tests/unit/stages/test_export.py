"""pipeline/stages/export.py: Parquet metadata that makes `datasets` load image structs as PIL images."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.stage import REASON, STATUS
from pipeline.stages.export import Export, ExportConfig, export_batch, hf_features_metadata, is_image_struct
from pipeline.stages.ingest import IMAGE_TYPE


@pytest.fixture
def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (9, 8), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def rows(png) -> pa.Table:
    """Export input as the runner commits it: public columns plus internal ones."""
    return pa.table(
        {
            "id": ["a-q0", "b-q0"],
            "query_index": pa.array([0, 0], pa.int32()),
            "image": pa.array([{"bytes": png, "path": "a.png"}, None], IMAGE_TYPE),
            "llm_raw": ['{"pairs": []}', "{}"],
            STATUS: ["ok", "ok"],
            REASON: ["", ""],
        }
    )


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


def test_hf_features_metadata_marks_image_columns_as_image_features(rows):
    features = json.loads(hf_features_metadata(rows.schema)[b"huggingface"])["info"]["features"]
    assert (features["image"], features["id"]) == ({"_type": "Image"}, {"dtype": "string", "_type": "Value"})


def test_commit_hook_describes_only_public_columns(rows):
    meta = Export(ExportConfig(), None).commit_hook(rows, {}).schema.metadata
    assert list(json.loads(meta[b"huggingface"])["info"]["features"]) == [
        "id",
        "query_index",
        "image",
        "llm_raw",
    ]


def test_datasets_loads_the_image_column_as_pil_images(rows, tmp_path, offline_hf, png):
    import datasets

    table = Export(ExportConfig(), None).commit_hook(rows, {}).drop_columns([STATUS, REASON])
    pq.write_table(table, tmp_path / "train-000000.parquet")
    ds = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "train-000000.parquet"), split="train", cache_dir=str(offline_hf)
    )
    first = ds[0]["image"]
    assert (isinstance(first, Image.Image), first.size, ds[1]["image"]) == (True, (9, 8), None)


def test_export_batch_drops_llm_raw_when_asked(rows):
    assert "llm_raw" not in export_batch(rows, drop_raw=True).column_names


def test_export_batch_keeps_llm_raw_when_not_asked(rows):
    assert export_batch(rows, drop_raw=False).column_names == rows.column_names
