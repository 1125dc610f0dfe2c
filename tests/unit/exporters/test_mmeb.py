"""pipeline/exporters/mmeb.py: the Parquet loaded back as VLM2Vec loads MMEB-train, checked field by field
against the run's GME rows.

The loader here follows VLM2Vec's src/data/dataset/mmeb_dataset.py: `load_dataset(dataset_name,
subset_name, split=dataset_split)` with the default split "original", the six columns read by name,
images opened at `os.path.join(image_dir, path)` when the path is not empty, and the Phi-3-V token
`<|image_1|>` swapped for the backbone's (`VLM_IMAGE_TOKENS`).
"""

from __future__ import annotations

import os

import pytest
from PIL import Image

from pipeline.errors import ExportError
from pipeline.exporters import export_run
from tests.support.gme_run import split_ids

PHI3V = "<|image_1|>"
COLUMNS = ["qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path"]


@pytest.fixture(scope="module")
def mmeb_out(gme_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("mmeb") / "out"
    export_run(str(gme_run), "mmeb", str(out))
    return out


def load(out, split: str, cache: str):
    import datasets

    return datasets.load_dataset(str(out), "fusegen", split=split, cache_dir=cache)


def get_image(image_dir: str, path: str) -> bytes | None:
    """`TrainTextImageDataset._get_image`: "" is no image, else a path under `image_dir`."""
    if not path:
        return None
    full = os.path.join(image_dir, path)
    Image.open(full).load()
    with open(full, "rb") as f:
        return f.read()


def side(text: str, struct: dict | None) -> str:
    return f"{PHI3V}\n{text}" if struct else text


def test_the_loader_call_finds_the_fusegen_subset_with_its_splits(mmeb_out, gme_rows, offline_hf):
    counts = {s: len(load(mmeb_out, s, offline_hf)) for s in ("original", "validation")}
    assert counts == {"original": sum(r["split"] == "train" for r in gme_rows.values()),
                      "validation": sum(r["split"] == "validation" for r in gme_rows.values())}


def test_the_six_columns_are_strings(mmeb_out, offline_hf):
    features = load(mmeb_out, "original", offline_hf).features
    assert [features[c].dtype for c in COLUMNS] == ["string"] * 6


def test_query_is_image_token_then_instruction_and_query_text(mmeb_out, gme_rows, offline_hf):
    rows = load(mmeb_out, "original", offline_hf)
    assert sorted(rows["id"]) == split_ids(gme_rows, "train")
    for row in rows:
        gme = gme_rows[row["id"]]
        assert row["qry"] == side(f"{gme['instruction']} {gme['query_text']}", gme["query_image"])
        assert get_image(str(mmeb_out), row["qry_image_path"]) == gme["query_image"]["bytes"]


def test_positive_text_and_image_match_the_gme_row(mmeb_out, gme_rows, offline_hf):
    rows = load(mmeb_out, "original", offline_hf)
    assert sorted(rows["id"]) == split_ids(gme_rows, "train")
    for row in rows:
        gme = gme_rows[row["id"]]
        assert row["pos_text"] == side(gme["pos_text"], gme["pos_image"])
        assert get_image(str(mmeb_out), row["pos_image_path"]) == gme["pos_image"]["bytes"]


def test_the_negative_is_the_hardest_one(mmeb_out, gme_rows, offline_hf):
    rows = load(mmeb_out, "validation", offline_hf)
    assert sorted(rows["id"]) == split_ids(gme_rows, "validation")
    for row in rows:
        gme = gme_rows[row["id"]]
        assert (row["neg_text"], row["neg_doc_id"]) == (side(gme["neg_texts"][0], gme["neg_images"][0]), gme["neg_doc_ids"][0])
        assert get_image(str(mmeb_out), row["neg_image_path"]) == gme["neg_images"][0]["bytes"]


def test_it2t_candidates_have_no_token_and_an_empty_path(it2t_run, tmp_path, offline_hf):
    export_run(str(it2t_run), "mmeb", str(tmp_path / "out"))
    row = load(tmp_path / "out", "original", offline_hf)[0]
    assert (row["pos_image_path"], PHI3V in row["pos_text"], row["neg_image_path"], PHI3V in row["qry"]) == ("", False, "", True)


def test_rows_without_a_negative_get_empty_negative_columns_by_default(ragged_run, tmp_path, offline_hf):
    export_run(str(ragged_run), "mmeb", str(tmp_path / "out"))
    rows = list(load(tmp_path / "out", "original", offline_hf))
    assert [r["neg_text"] == "" for r in rows] == [False, False, True, False, False, False]


def test_negatives_one_drops_rows_without_a_negative(ragged_run, tmp_path, offline_hf):
    marker = export_run(str(ragged_run), "mmeb", str(tmp_path / "out"), negatives=1)
    assert (len(load(tmp_path / "out", "original", offline_hf)), marker["dropped"]["fewer_negatives"]) == (5, 1)


def test_more_than_one_negative_per_row_is_refused(gme_run, tmp_path):
    with pytest.raises(ExportError, match="at most 1 negative"):
        export_run(str(gme_run), "mmeb", str(tmp_path / "out"), negatives=2)


def test_the_readmes_dataset_config_entry_is_what_vlm2vecs_train_yaml_holds(mmeb_out, gme_rows, offline_hf):
    """The keys of VLM2Vec's experiments/public/train/train_image.yaml, used as load_mmeb_dataset uses them:
    `load_dataset(dataset_name, subset_name, split=dataset_split)`, the first `num_sample_per_subset` rows,
    images at `os.path.join(image_dir, path)`; `weight` for init_mixed_dataset."""
    import datasets
    import yaml

    readme = (mmeb_out / "README.md").read_text()
    entries = yaml.safe_load(readme.split("```yaml\n", 1)[1].split("```", 1)[0])
    entry = entries["fusegen"]
    assert set(entry) == {"dataset_parser", "dataset_name", "subset_name", "dataset_split", "image_dir",
                          "num_sample_per_subset", "weight"} and entry["dataset_parser"] == "mmeb"
    ds = datasets.load_dataset(entry["dataset_name"], entry["subset_name"], split=entry["dataset_split"],
                               cache_dir=offline_hf)
    train = sum(r["split"] == "train" for r in gme_rows.values())
    assert ds.num_rows == entry["num_sample_per_subset"] == train
    assert all(get_image(entry["image_dir"], r["qry_image_path"]) for r in ds)
    assert "one hard\nnegative per row" in readme
