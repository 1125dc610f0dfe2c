"""pipeline/stages/export.py with `schema: gme` and pipeline/triplets.py: the fused triplet rows, their
checks, the doc-level split, the contamination filter and what `datasets` loads back. No Ray."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.errors import PipelineConfigError, StageInputError
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.settings import build_stages, check_chain, load_config
from pipeline.stage import REASON, SPLIT, STATUS
from pipeline.stages.export import Export, ExportConfig, gme_batch
from pipeline.stages.ingest import Ingest, IngestConfig
from pipeline.text.contamination import ContaminationConfig
from pipeline.triplets import GME_COLUMNS, SCORES, to_gme_rows
from tests.support.gme_run import make_gme_run, upstream_rows, write_jsonl
from tests.support.run_dir import REPO


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore.from_uri(str(tmp_path / "run"))


@pytest.fixture
def upstream(store) -> pa.Table:
    return upstream_rows(store, n=6, negatives=3)


@pytest.fixture
def offline_hf(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return tmp_path / "hf-cache"


def test_gme_rows_have_exactly_the_design_columns_in_order(upstream):
    assert tuple(to_gme_rows(upstream).column_names) == GME_COLUMNS


def test_gme_row_types_are_the_schema_types(upstream):
    schema = to_gme_rows(upstream).schema
    types = {n: schema.field(n).type for n in ("query_image", "pos_image", "neg_images", "neg_doc_ids", "scores")}
    assert types == {
        "query_image": IMAGE_REF, "pos_image": IMAGE_REF, "neg_images": pa.list_(IMAGE_REF),
        "neg_doc_ids": pa.list_(pa.string()), "scores": SCORES,
    }


def test_query_text_is_the_entity_masked_rewrite_not_the_original_query(upstream):
    row = to_gme_rows(upstream).to_pylist()[0]
    assert (row["query_text"], "(Eiffel Tower)" in upstream["query"][0].as_py()) == (
        "When was this landmark built?", True,
    )


def test_candidate_texts_are_title_space_text_as_gme_encodes_a_titled_passage(upstream):
    row = to_gme_rows(upstream).to_pylist()[0]
    assert (row["pos_text"], row["pos_title"]) == (
        f"Eiffel Tower {upstream['text'][0].as_py()}", "Eiffel Tower",
    )
    assert row["neg_texts"][0].startswith("长城 长城是")


def test_negatives_are_ordered_by_rank_hardest_first_with_scores_and_ids_aligned(upstream):
    row = to_gme_rows(upstream).to_pylist()[0]
    assert (row["neg_doc_ids"], [round(s, 2) for s in row["scores"]["gme_negs"]]) == (
        ["d3", "d2", "d1"], [0.5, 0.4, 0.3],
    )


def test_it2t_candidates_carry_no_image_but_keep_one_slot_per_negative(upstream):
    row = to_gme_rows(upstream, task="it2t").to_pylist()[0]
    assert (row["pos_image"], row["neg_images"], row["query_image"] is not None) == (None, [None] * 3, True)


def test_it2it_candidates_carry_their_passage_image(upstream):
    row = to_gme_rows(upstream, task="it2it").to_pylist()[0]
    assert (row["pos_image"], row["neg_images"][0]) == (upstream["image"][0].as_py(), upstream["image"][3].as_py())


def test_scores_come_from_the_upstream_score_columns(upstream):
    scores = to_gme_rows(upstream).to_pylist()[1]["scores"]
    assert (scores["consistency_rank"], round(scores["clip"], 2), round(scores["gme_pos"], 2)) == (2, 0.26, 0.61)


def test_rows_without_an_instruction_get_the_configured_one(upstream):
    got = to_gme_rows(upstream, instruction="Default.")["instruction"].to_pylist()[:2]
    assert got == ["Find it.", "Default."]


def test_optional_columns_missing_upstream_are_null(upstream):
    thin = upstream.drop_columns(["entity", "clip_score", "title", "neg_scores", "neg_ranks", "image_source"])
    row = to_gme_rows(thin).to_pylist()[0]
    assert (row["entity"], row["scores"]["clip"], row["pos_title"], row["image_source"]) == (None, None, None, None)


def test_internal_columns_are_carried_over(upstream):
    tagged = upstream.append_column("_src", pa.array(range(upstream.num_rows), pa.int64()))
    assert to_gme_rows(tagged)["_src"].to_pylist() == list(range(upstream.num_rows))


def test_missing_gme_columns_fail_naming_them_and_the_present_ones(upstream):
    with pytest.raises(StageInputError, match=r"missing column\(s\) query_image, neg_images; present columns: id"):
        gme_batch(upstream.drop_columns(["query_image", "neg_images"]), ExportConfig())


def test_the_chain_check_refuses_a_gme_export_after_the_text_only_stages():
    config = load_config(REPO / "configs" / "base.yaml", ["export.schema=gme", "stages=[ingest, doc2query, consistency, entities, export]"])
    with pytest.raises(StageInputError, match="export: input is missing column.*query_image.*neg_doc_ids"):
        build_stages(config, None)


def test_the_base_config_builds_the_whole_gme_track_into_triplets():
    stages = build_stages(load_config(REPO / "configs" / "base.yaml"), None)
    assert [s.name for s in stages][-3:] == ["gme_score", "negatives", "export"]
    assert "neg_doc_ids" in stages[-1].input_columns


def test_a_passthrough_export_asks_only_for_an_id():
    check_chain([Ingest(IngestConfig(), None), Export(ExportConfig(schema="passthrough"), None)])


def outcome(out: pa.Table) -> list[tuple[str, str]]:
    return list(zip(out[STATUS].to_pylist(), out[REASON].to_pylist()))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: {**r, "query_image": None}, ("filtered", "filter:no_query_image")),
        (lambda r: {**r, "neg_texts": r["neg_texts"][:2]}, ("rejected", "error:negatives_misaligned")),
        (lambda r: {**r, "neg_doc_ids": [r["doc_id"], *r["neg_doc_ids"][1:]]}, ("rejected", "error:positive_in_negatives")),
        (lambda r: {**r, "neg_texts": [r["text"], *r["neg_texts"][1:]]}, ("rejected", "error:positive_in_negatives")),
    ],
    ids=["no-query-image", "misaligned", "own-doc-id", "own-text"],
)
def test_a_row_that_cannot_be_a_triplet_is_dropped_with_its_reason(upstream, change, expected):
    rows = upstream.to_pylist()
    rows[0] = change(rows[0])
    out = gme_batch(pa.Table.from_pylist(rows, schema=upstream.schema), ExportConfig())
    assert outcome(out)[:2] == [expected, ("ok", "")]


def test_every_row_gets_the_split_its_doc_id_hashes_to(upstream):
    out = gme_batch(upstream, ExportConfig(validation_ratio=0.5, split_seed=3))
    by_doc = {}
    for doc, split in zip(out["doc_id"].to_pylist(), out[SPLIT].to_pylist()):
        by_doc.setdefault(doc, set()).add(split)
    assert all(len(s) == 1 for s in by_doc.values()) and set().union(*by_doc.values()) == {"train", "validation"}


def test_the_gme_stage_writes_train_and_validation_part_prefixes():
    assert Export(ExportConfig(), None).part_prefixes() == ("train", "validation")


def test_a_passthrough_stage_writes_only_train_parts():
    assert Export(ExportConfig(schema="passthrough"), None).part_prefixes() == ("train",)


def test_row_groups_are_capped_by_the_configured_megabytes():
    assert Export(ExportConfig(row_group_mb=3), None).row_group_bytes() == 3 * 2**20


def test_the_written_export_loads_with_datasets_as_pil_images_in_every_image_column(tmp_path, offline_hf):
    import datasets

    run = make_gme_run(tmp_path, rows=8, validation_ratio=0.4, task="it2it")
    ds = datasets.load_dataset("parquet", data_dir=str(run / "export" / "data"), cache_dir=str(offline_hf))
    assert sorted(ds) == ["train", "validation"]
    row = ds["train"][0]
    images = [row["query_image"], row["pos_image"], *row["neg_images"]]
    assert [isinstance(im, Image.Image) for im in images] == [True] * 5
    assert images[0].size == (24, 16)


def test_the_written_parts_carry_hf_image_features_for_single_and_list_columns(tmp_path):
    run = make_gme_run(tmp_path)
    meta = pq.read_schema(next((run / "export" / "data").glob("train-*.parquet"))).metadata
    features = json.loads(meta[b"huggingface"])["info"]["features"]
    assert (features["query_image"], features["neg_images"]) == (
        {"_type": "Image"}, {"feature": {"_type": "Image"}, "_type": "Sequence"},
    )
    assert '"List"' not in meta[b"huggingface"].decode()  # datasets 3.x knows no List


# -- contamination ---------------------------------------------------------------------------------


def contaminated_stage(tmp_path, *files: str, ngram: int = 5, threshold: float = 0.5) -> Export:
    cfg = ExportConfig(contamination=ContaminationConfig(eval_files=files, ngram=ngram, threshold=threshold))
    return Export(cfg, SimpleNamespace(run_uri=str(tmp_path / "run")))


def test_rows_whose_passage_overlaps_an_eval_text_are_filtered_as_contamination(tmp_path, upstream):
    passage = upstream["text"][1].as_py()
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"qry": "<|image_1|>\nunrelated words here"}, {"txt": passage}])
    stage = contaminated_stage(tmp_path, str(evals))
    stage.prepare()
    out = gme_batch(upstream, stage.config, stage._eval_set)
    flagged = [i for i, (s, r) in enumerate(outcome(out)) if r == "filter:contamination"]
    assert flagged == [1]


def test_a_short_query_equal_to_an_eval_query_is_contamination(tmp_path, upstream):
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"query_txt": "who DESIGNED this structure"}])
    stage = contaminated_stage(tmp_path, str(evals), ngram=13)
    stage.prepare()
    out = gme_batch(upstream, stage.config, stage._eval_set)
    assert [r for r in out[REASON].to_pylist()] == ["", "filter:contamination", "", "", "filter:contamination", ""]


def test_mmeb_style_parquet_eval_files_are_read(tmp_path, upstream):
    path = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"qry_text": ["x"], "tgt_text": [[upstream["text"][2].as_py(), "y"]]}), path)
    stage = contaminated_stage(tmp_path, str(path))
    stage.prepare()
    assert gme_batch(upstream, stage.config, stage._eval_set)[REASON].to_pylist()[2] == "filter:contamination"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", "", "is empty"),
        ("bad.jsonl", '{"text": "fine"}\n{"text": broken\n', "line 2 is not valid JSON"),
        ("unknown.jsonl", '{"image": "a.png", "label": 3}\n', "has no text field fusegen knows"),
        ("evals.csv", "text\nhello\n", "unknown format"),
        ("bad.parquet", "not parquet at all", "not a readable Parquet file"),
        ("blank.jsonl", "\n\n", "holds no records"),
    ],
)
def test_an_unusable_eval_file_is_a_config_error_before_any_work(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(PipelineConfigError, match=message):
        contaminated_stage(tmp_path, str(tmp_path / name)).prepare()


def test_a_missing_eval_file_is_a_config_error(tmp_path):
    with pytest.raises(PipelineConfigError, match="does not exist"):
        contaminated_stage(tmp_path, str(tmp_path / "nope.jsonl")).prepare()


def test_the_eval_files_content_is_part_of_the_stage_identity(tmp_path):
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"text": "one"}])
    before = contaminated_stage(tmp_path, str(evals)).input_identity()
    write_jsonl(evals, [{"text": "two"}])
    assert before != contaminated_stage(tmp_path, str(evals)).input_identity()


def test_the_eval_set_does_not_travel_with_the_pickled_stage(tmp_path):
    import pickle

    evals = write_jsonl(tmp_path / "eval.jsonl", [{"text": "one two three four five six"}])
    stage = contaminated_stage(tmp_path, str(evals))
    stage.prepare()
    assert pickle.loads(pickle.dumps(stage))._eval_set is None and stage._eval_set is not None


@pytest.mark.parametrize(("field", "value"), [("ngram", 0), ("threshold", 0.0), ("threshold", 1.5)])
def test_contamination_knobs_out_of_range_are_config_errors(field, value):
    with pytest.raises(PipelineConfigError, match=f"contamination.{field}"):
        ContaminationConfig(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("schema", "hf"), ("task", "t2t"), ("validation_ratio", 1.0)])
def test_export_knobs_out_of_range_are_config_errors(field, value):
    with pytest.raises(PipelineConfigError, match=f"`{field}`"):
        ExportConfig(**{field: value})
