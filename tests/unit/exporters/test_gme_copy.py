"""pipeline/exporters/gme.py: the GME Parquet copied out of the run loads with `datasets` as PIL images."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from pipeline.errors import ExportError
from pipeline.exporters import export_run
from tests.support.gme_run import split_ids


@pytest.fixture(scope="module")
def gme_out(gme_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("gme-copy") / "out"
    export_run(str(gme_run), "gme", str(out))
    return out


def test_the_copy_holds_the_runs_split_files(gme_out, gme_run):
    assert sorted(os.listdir(gme_out / "data")) == sorted(os.listdir(gme_run / "export" / "data"))


def test_datasets_yields_pil_images_in_every_image_column_of_every_split(gme_out, gme_rows, offline_hf):
    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(gme_out / "data"), cache_dir=offline_hf)
    for split in ("train", "validation"):
        assert sorted(ds[split]["id"]) == split_ids(gme_rows, split)
        for row in ds[split]:
            images = [row["query_image"], row["pos_image"], *row["neg_images"]]
            assert all(isinstance(im, Image.Image) for im in images)
            assert len(row["neg_images"]) == len(gme_rows[row["id"]]["neg_texts"]) == 3


def test_the_loaded_rows_equal_the_runs_rows_field_by_field(gme_out, gme_rows, offline_hf):
    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(gme_out / "data"), cache_dir=offline_hf)
    texts = ["id", "task", "instruction", "query_text", "pos_text", "pos_title", "neg_texts", "neg_doc_ids", "doc_id"]
    assert sorted(ds["train"]["id"]) == split_ids(gme_rows, "train")
    for row in ds["train"]:
        assert {k: row[k] for k in texts} == {k: gme_rows[row["id"]][k] for k in texts}


def test_the_card_is_copied_when_the_run_has_one(gme_run, tmp_path):
    (gme_run / "export" / "README.md").write_text("# card\n")
    try:
        export_run(str(gme_run), "gme", str(tmp_path / "out"))
    finally:
        (gme_run / "export" / "README.md").unlink()
    assert (tmp_path / "out" / "README.md").read_text() == "# card\n"


def test_negatives_do_not_apply_to_the_gme_copy(gme_run, tmp_path):
    with pytest.raises(ExportError, match="--negatives does not apply to --format gme"):
        export_run(str(gme_run), "gme", str(tmp_path / "out"), negatives=2)
