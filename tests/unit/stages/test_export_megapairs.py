"""pipeline/stages/export.py with `schema: megapairs` and pipeline/triplets_megapairs.py: the MegaPairs
triplet rows, their checks, the split by query image, the resize and what `datasets` loads back. No Ray."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.errors import PipelineConfigError, StageInputError
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.stage import REASON, SPLIT, STATUS
from pipeline.stages.export import Export, ExportConfig
from pipeline.text.contamination import ContaminationConfig, build_eval_set
from pipeline.triplets_megapairs import (
    MP_COLUMNS,
    MP_INPUTS,
    MegaPairsExportConfig,
    megapairs_batch,
    mp_columns,
    to_megapairs_rows,
)
from tests.support.gme_run import write_jsonl
from tests.support.megapairs_run import MODELS, make_megapairs_run, mp_upstream_rows


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore.from_uri(str(tmp_path / "run"))


@pytest.fixture
def upstream(store) -> pa.Table:
    return mp_upstream_rows(store, n=8)


def batch(table: pa.Table, ratio: float = 0.0, eval_set=None, **mp) -> pa.Table:
    return megapairs_batch(table, MegaPairsExportConfig(**mp), ratio, 1, eval_set)


def reasons(out: pa.Table) -> list[str]:
    return out[REASON].to_pylist()


def with_rows(table: pa.Table, change) -> pa.Table:
    rows = table.to_pylist()
    change(rows)
    return pa.Table.from_pylist(rows, schema=table.schema)


def test_megapairs_rows_have_exactly_the_columns_in_order_and_types(upstream):
    rows = to_megapairs_rows(upstream, MegaPairsExportConfig())
    assert tuple(rows.column_names) == MP_COLUMNS
    types = {n: rows.schema.field(n).type for n in ("q_img", "q_text", "t_img", "hns", "hn_ids", "pair_scores",
                                                     "word_limit", "mine_seed")}
    assert types == {
        "q_img": IMAGE_REF, "q_text": pa.list_(pa.string()), "t_img": IMAGE_REF, "hns": pa.list_(IMAGE_REF),
        "hn_ids": pa.list_(pa.string()), "pair_scores": pa.list_(pa.float32()), "word_limit": pa.int32(),
        "mine_seed": pa.int64(),
    }


def test_the_text_field_switch_names_the_instruction_column_q_texts(upstream):
    rows = to_megapairs_rows(upstream, MegaPairsExportConfig(text_field="q_texts"))
    assert ("q_texts" in rows.column_names, "q_text" in rows.column_names) == (True, False)
    assert rows["q_texts"].to_pylist()[0] == upstream["instructions"].to_pylist()[0]
    assert Export(ExportConfig(schema="megapairs", megapairs=MegaPairsExportConfig(text_field="q_texts")),
                  None).output_columns == mp_columns("q_texts")


def test_hns_start_with_the_query_image_then_the_mined_negatives_in_order(upstream):
    row, up = to_megapairs_rows(upstream, MegaPairsExportConfig()).to_pylist()[0], upstream.to_pylist()[0]
    assert row["hns"] == [up["query_image"], *up["neg_images"]]
    assert row["hn_ids"] == [up["query_id"], *up["neg_ids"]]


def test_query_first_false_keeps_only_the_mined_negatives(upstream):
    row, up = to_megapairs_rows(upstream, MegaPairsExportConfig(query_first=False)).to_pylist()[0], upstream.to_pylist()[0]
    assert (row["hns"], row["hn_ids"]) == (up["neg_images"], up["neg_ids"])


def test_a_target_among_its_negatives_by_sha_or_by_id_is_rejected(upstream):
    def plant(rows):
        rows[1]["neg_images"][0] = dict(rows[1]["target_image"])  # same image, another pool id
        rows[2]["neg_ids"][1] = rows[2]["target_id"]
        rows[3]["target_image"] = dict(rows[3]["query_image"])  # target is the query image itself

    out = batch(with_rows(upstream, plant))
    assert reasons(out)[:5] == ["", "error:target_in_negatives", "error:target_in_negatives",
                                "error:target_in_negatives", ""]
    assert out[STATUS].to_pylist()[1] == "rejected"


def test_empty_or_blank_instructions_are_filtered_and_missing_images_rejected(upstream):
    def plant(rows):
        rows[0]["instructions"] = []
        rows[1]["instructions"] = ["  "]
        rows[2]["target_image"] = None
        rows[3]["neg_scores"] = [0.5]

    out = batch(with_rows(upstream, plant))
    assert reasons(out)[:5] == ["filter:no_instructions", "filter:no_instructions", "error:no_image",
                                "error:negatives_misaligned", ""]
    assert out[STATUS].to_pylist()[:2] == ["filtered", "filtered"]


def test_missing_input_columns_are_named_before_any_row_is_made(upstream):
    with pytest.raises(StageInputError, match="missing column\\(s\\) target_image, instructions"):
        batch(upstream.drop_columns(["target_image", "instructions"]))
    assert Export(ExportConfig(schema="megapairs"), None).input_columns == MP_INPUTS


def test_the_split_is_by_query_image_so_no_query_id_is_in_both_splits(store):
    table = mp_upstream_rows(store, n=40, images=20)
    out = batch(table, ratio=0.5)
    by_query: dict[str, set] = {}
    for q, s in zip(out["query_id"].to_pylist(), out[SPLIT].to_pylist()):
        by_query.setdefault(q, set()).add(s)
    assert all(len(s) == 1 for s in by_query.values())
    assert {s for v in by_query.values() for s in v} == {"train", "validation"}
    assert out[SPLIT].to_pylist() == batch(table.slice(0, 40), ratio=0.5)[SPLIT].to_pylist()


def test_contaminated_instructions_filter_the_row(upstream, tmp_path):
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"text": "Show a similar interior, lit by a lamp."}])
    eval_set = build_eval_set(ContaminationConfig(eval_files=(str(evals),)))
    out = reasons(batch(upstream, eval_set=eval_set))
    assert out == ["", "filter:contamination"] * 4


@pytest.mark.parametrize("values, key", [
    ({"text_field": "query"}, "text_field"), ({"image_size": 8}, "image_size"), ({"resize_mode": "pad"}, "resize_mode"),
])
def test_bad_megapairs_options_are_config_errors_naming_the_key(values, key):
    with pytest.raises(PipelineConfigError, match=key):
        ExportConfig.from_dict({"schema": "megapairs", "megapairs": values})


def test_image_size_writes_square_jpegs_in_every_image_column(tmp_path):
    run = make_megapairs_run(tmp_path, rows=4, validation_ratio=0.0, image_size=64)
    row = pq.read_table(next((run / "export" / "data").glob("train-*.parquet"))).to_pylist()[0]
    for image in [row["q_img"], row["t_img"], *row["hns"]]:
        with Image.open(io.BytesIO(image["bytes"])) as im:
            assert (im.format, im.size) == ("JPEG", (64, 64))
        assert image["path"].endswith(".jpg")


def test_without_image_size_the_stored_bytes_are_kept(tmp_path):
    run = make_megapairs_run(tmp_path, rows=4, validation_ratio=0.0)
    row = pq.read_table(next((run / "export" / "data").glob("train-*.parquet"))).to_pylist()[0]
    with Image.open(io.BytesIO(row["q_img"]["bytes"])) as im:
        assert (im.format, im.size) == ("PNG", (30, 20))


def test_datasets_loads_the_splits_with_pil_images_and_instruction_lists(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    run = make_megapairs_run(tmp_path, rows=8, validation_ratio=0.4, text_field="q_texts")
    ds = datasets.load_dataset("parquet", data_dir=str(run / "export" / "data"), cache_dir=str(tmp_path / "cache"))
    assert sorted(ds) == ["train", "validation"]
    row = ds["train"][0]
    images = [row["q_img"], row["t_img"], *row["hns"]]
    assert [isinstance(im, Image.Image) for im in images] == [True] * 6
    assert row["q_texts"] and all(isinstance(t, str) and t.strip() for t in row["q_texts"]), row["q_texts"]
    assert ds["train"].num_rows + ds["validation"].num_rows == 8


def test_the_run_writes_every_row_with_a_balanced_ledger(tmp_path, store):
    table = mp_upstream_rows(ImageStore.from_uri(str(tmp_path / "run")), n=6)
    rows = table.to_pylist()
    rows[2]["neg_images"][0] = dict(rows[2]["target_image"])
    run = make_megapairs_run(tmp_path, upstream=pa.Table.from_pylist(rows, schema=table.schema))
    manifest = json.loads((run / "export" / "_manifest.json").read_text())
    written = sum(pq.read_metadata(p).num_rows for p in (run / "export" / "data").glob("*.parquet"))
    assert (manifest["rows"], written) == ({"in": 6, "out": 5, "filtered": 0, "rejected": 1}, 5)
    assert manifest["reasons"] == {"error:target_in_negatives": 1}


def test_the_export_stage_materialises_only_when_bound_to_a_run(upstream, store):
    stage = Export(ExportConfig(schema="megapairs", megapairs=MegaPairsExportConfig(image_size=32)),
                   SimpleNamespace(run_uri=store.run_fs.root))
    out = batch(upstream).drop_columns([STATUS, REASON, SPLIT])
    written = stage.finish_part(out)
    assert written.schema.field("hns").type.value_type.names == ["bytes", "path"]
    assert b"huggingface" in written.schema.metadata


def test_before_execute_reads_the_model_ids_of_the_earlier_sections_into_every_row(tmp_path, upstream):
    run = make_megapairs_run(tmp_path, rows=4)
    stage = Export(ExportConfig(schema="megapairs"), SimpleNamespace(run_uri=str(run)))
    stage.before_execute(SimpleNamespace(run_fs=store_fs(run)))
    models = json.loads(stage._models)
    assert models == {f"{s}.{role}": m for s, roles in MODELS.items() for role, m in roles.items()}
    step = stage.task_steps()[0]
    out = step.fn(upstream, **step.kwargs)
    assert set(out["models"].to_pylist()) == {stage._models}
    written = pq.read_table(next((run / "export" / "data").glob("*.parquet")))
    assert json.loads(written["models"][0].as_py())["describe.vlm"] == MODELS["describe"]["vlm"]


def store_fs(run):
    from pipeline.io.fs import RunFS

    return RunFS.from_uri(str(run))


def test_megapairs_options_enter_only_the_megapairs_fingerprint():
    gme = ExportConfig.from_dict({"megapairs": {"image_size": 512}}).semantic_dict()
    mp = ExportConfig.from_dict({"schema": "megapairs", "megapairs": {"image_size": 512}}).semantic_dict()
    assert ("megapairs" in gme, mp["megapairs"]["image_size"]) == (False, 512)
