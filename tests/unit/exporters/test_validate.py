"""pipeline/exporters/validate.py: clean exports of every format pass; each planted violation is caught
with its own message (each case edits one export copy, so each can fail on its own)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ExportError
from pipeline.exporters import export_run
from pipeline.exporters.validate import validate

FORMATS = {"gme": {}, "ms-swift": {}, "legacy": {"legacy": True}, "mmeb": {}, "mbeir": {}}


@pytest.fixture(scope="module")
def exports(gme_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, kwargs in FORMATS.items():
        fmt = "ms-swift" if name == "legacy" else name
        export_run(str(gme_run), fmt, str(root / name), **kwargs)
        out[name] = root / name
    return out


@pytest.fixture
def copy_of(exports, tmp_path):
    def make(name: str) -> Path:
        return Path(shutil.copytree(exports[name], tmp_path / name))

    return make


def edit_jsonl(path: Path, change) -> None:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    change(rows)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def edit_parquet(path: Path, change) -> None:
    table = pq.read_table(path)
    rows = table.to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def problems_of(path: Path) -> str:
    report = validate(str(path))
    assert not report.ok, "the planted violation was not caught"
    return "\n".join(report.problems.first)


@pytest.mark.parametrize("name", list(FORMATS))
def test_a_clean_export_of_every_format_is_valid(exports, gme_rows, name):
    report = validate(str(exports[name]))
    assert (report.ok, report.problems.first, sum(report.rows.values())) == (True, [], len(gme_rows))


def test_a_run_dir_and_its_export_folder_validate_as_gme(gme_run):
    reports = [validate(str(gme_run)), validate(str(gme_run / "export"))]
    assert [(r.format, r.ok, r.images) for r in reports] == [("gme", True, 8)] * 2


def test_a_folder_that_is_no_export_is_an_error(tmp_path):
    with pytest.raises(ExportError, match="not an export fusegen knows"):
        validate(str(tmp_path))


def first_image(out: Path) -> Path:
    return next(p for p in sorted((out / "images").rglob("*")) if p.is_file())


def _swap_first_pos_into_negs(rows: list[dict]) -> None:
    rows[0]["neg_doc_ids"][1] = rows[0]["doc_id"]


def _gme_text_copy(rows: list[dict]) -> None:
    rows[0]["neg_texts"][2] = rows[0]["pos_text"]


def _gme_bad_image(rows: list[dict]) -> None:
    rows[0]["query_image"] = {"bytes": rows[0]["query_image"]["bytes"][:40], "path": "x.png"}


def _gme_duplicate(rows: list[dict]) -> None:
    rows.append(dict(rows[0]))


GME_CASES = {
    "broken-image": (_gme_bad_image, "does not decode"),
    "own-doc-id": (_swap_first_pos_into_negs, "negative 1 is the positive's own passage"),
    "own-text": (_gme_text_copy, "negative 2 has the positive's content"),
    "duplicate-id": (_gme_duplicate, "duplicate triplet id"),
}


@pytest.mark.parametrize("case", list(GME_CASES))
def test_gme_violations_are_caught(copy_of, case):
    change, message = GME_CASES[case]
    out = copy_of("gme")
    edit_parquet(next((out / "data").glob("train-*.parquet")), change)
    assert message in problems_of(out)


def test_a_doc_id_in_both_splits_is_caught(copy_of):
    out = copy_of("gme")
    train = next((out / "data").glob("train-*.parquet"))
    doc = pq.read_table(train)["doc_id"][0].as_py()
    edit_parquet(next((out / "data").glob("validation-*.parquet")), lambda rows: rows[0].update(doc_id=doc))
    assert f"doc_id {doc!r} has rows in train and validation" in problems_of(out)


def test_a_gme_file_missing_a_column_is_a_schema_problem(copy_of):
    out = copy_of("gme")
    path = next((out / "data").glob("validation-*.parquet"))
    pq.write_table(pq.read_table(path).drop_columns(["neg_doc_ids"]), path)
    assert "missing GME column(s) ['neg_doc_ids']" in problems_of(out)


def test_rows_lost_from_an_export_disagree_with_its_marker(copy_of):
    out = copy_of("gme")
    edit_parquet(next((out / "data").glob("train-*.parquet")), lambda rows: rows.pop())
    assert "counts: train: the marker says 7 rows, found 6" in problems_of(out)


def test_rows_lost_from_a_runs_export_disagree_with_its_manifest(gme_run, tmp_path):
    run = Path(shutil.copytree(gme_run, tmp_path / "run"))
    edit_parquet(next((run / "export" / "data").glob("train-*.parquet")), lambda rows: rows.pop())
    assert "the run's export manifest counts 8 rows out, the export holds 7" in problems_of(run)


def test_an_export_of_a_run_whose_export_was_re_run_since_is_caught(gme_run, tmp_path):
    run = Path(shutil.copytree(gme_run, tmp_path / "run"))
    export_run(str(run), "ms-swift", str(tmp_path / "out"))
    manifest = json.loads((run / "export" / "_manifest.json").read_text())
    (run / "export" / "_manifest.json").write_text(json.dumps({**manifest, "fingerprint": "fp-new"}))
    assert "fingerprint differs" in problems_of(tmp_path / "out")


SWIFT_CASES = {
    "tag-count": (lambda rows: rows[0]["messages"][-1].update(content="no tag here"), "0 <image> tag(s)"),
    "two-positives": (lambda rows: rows[0].update(positive_messages=rows[0]["positive_messages"] * 2),
                      "exactly one positive"),
    "own-doc-id": (_swap_first_pos_into_negs, "negative 1 is the positive's own passage"),
    "own-text": (lambda rows: rows[0]["negative_messages"][0][0].update(
        content=rows[0]["positive_messages"][0][0]["content"]), "negative 0 has the positive's content"),
    "duplicate-id": (lambda rows: rows.append(rows[0]), "duplicate triplet id"),
    "ragged": (lambda rows: (rows[0]["negative_messages"].pop(), rows[0]["negative_images"].pop()),
               "different numbers of negatives"),
    "misaligned": (lambda rows: rows[0]["negative_images"].pop(), "must be lists of one length"),
    "lost-row": (lambda rows: rows.pop(), "train: the marker says"),
}


@pytest.mark.parametrize("case", list(SWIFT_CASES))
def test_ms_swift_violations_are_caught(copy_of, case):
    change, message = SWIFT_CASES[case]
    out = copy_of("ms-swift")
    edit_jsonl(out / "train.jsonl", change)
    assert message in problems_of(out)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda path: path.write_bytes(path.read_bytes()[:50]), "does not decode"),
        (lambda path: path.unlink(), "cannot be read"),
    ],
    ids=["truncated", "missing"],
)
def test_an_image_file_that_is_broken_or_gone_is_caught(copy_of, change, message):
    out = copy_of("ms-swift")
    change(first_image(out))
    assert message in problems_of(out)


def test_a_line_that_is_not_json_is_caught(copy_of):
    out = copy_of("ms-swift")
    with open(out / "validation.jsonl", "a", encoding="utf-8") as f:
        f.write("{not json\n")
    assert "validation.jsonl:2: not valid JSON" in problems_of(out)


def test_a_legacy_row_with_too_few_images_is_caught(copy_of):
    out = copy_of("legacy")
    edit_jsonl(out / "train.jsonl", lambda rows: rows[0]["images"].pop())
    assert "<image> tag(s) but" in problems_of(out)


MMEB_CASES = {
    "token-without-path": (lambda rows: rows[0].update(pos_image_path=""), "1 <|image_1|> token(s) with image path ''"),
    "own-text": (lambda rows: rows[0].update(neg_text=rows[0]["pos_text"], neg_image_path=rows[0]["pos_image_path"]),
                 "negative 0 has the positive's content"),
    "duplicate-id": (lambda rows: rows.append(dict(rows[0])), "duplicate triplet id"),
}


@pytest.mark.parametrize("case", list(MMEB_CASES))
def test_mmeb_violations_are_caught(copy_of, case):
    change, message = MMEB_CASES[case]
    out = copy_of("mmeb")
    edit_parquet(out / "fusegen" / "original-00000.parquet", change)
    assert message in problems_of(out)


def test_an_mmeb_export_without_its_readme_is_caught(copy_of):
    out = copy_of("mmeb")
    (out / "README.md").unlink()
    assert "README.md: missing" in problems_of(out)


MBEIR_QUERY_CASES = {
    "unknown-did": (lambda rows: rows[0].update(neg_cand_list=["10:999999"]), "['10:999999'] are not in"),
    "bad-qid": (lambda rows: rows[0].update(qid="q-1"), "needs a qid '<dataset_id>:<n>'"),
    "modality": (lambda rows: rows[0].update(query_modality="text"), "query_modality 'text' does not match"),
    "no-instruction": (lambda rows: rows[0].update(qid="99:0"), "no instruction for (99, image,text, image,text)"),
    "duplicate-id": (lambda rows: rows.append(dict(rows[0], qid="10:4000")), "duplicate triplet id"),
    "task-id": (lambda rows: rows[0].update(task_id=6), "task_id 6, but UniIR's task for its modalities is 8"),
    "no-qrels": (lambda rows: rows[0].update(pos_cand_list=rows[0]["neg_cand_list"][:1]), "qrels hold ['10:"),
}


@pytest.mark.parametrize("case", list(MBEIR_QUERY_CASES))
def test_mbeir_query_violations_are_caught(copy_of, case):
    change, message = MBEIR_QUERY_CASES[case]
    out = copy_of("mbeir")
    edit_jsonl(out / "query" / "train" / "mbeir_fusegen_train.jsonl", change)
    assert message in problems_of(out)


def test_an_mbeir_export_without_its_qrels_is_caught(copy_of):
    out = copy_of("mbeir")
    (out / "qrels" / "val" / "mbeir_fusegen_val_qrels.txt").unlink()
    assert "qrels/val/mbeir_fusegen_val_qrels.txt: missing" in problems_of(out)


def test_an_mbeir_qrels_line_uniir_cannot_split_is_caught(copy_of):
    path = copy_of("mbeir") / "qrels" / "train" / "mbeir_fusegen_train_qrels.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([" ".join(lines[0].split()[:4]), *lines[1:]]) + "\n")
    assert "needs five fields '<qid> 0 <did> <relevance> <task_id>'" in problems_of(path.parents[2])


def test_an_mbeir_pool_entry_whose_modality_lies_is_caught(copy_of):
    out = copy_of("mbeir")
    edit_jsonl(out / "cand_pool" / "local" / "mbeir_fusegen_train_cand_pool.jsonl",
               lambda rows: rows[0].update(modality="text"))
    assert "modality 'text' does not match txt / img_path" in problems_of(out)


def test_an_mbeir_negative_that_is_the_positive_is_caught(copy_of):
    out = copy_of("mbeir")
    edit_jsonl(out / "query" / "train" / "mbeir_fusegen_train.jsonl",
               lambda rows: rows[0].update(neg_cand_list=rows[0]["pos_cand_list"]))
    assert "negative 0 is the positive's own passage" in problems_of(out)


def test_an_unfinished_export_is_caught(copy_of):
    out = copy_of("ms-swift")
    marker = json.loads((out / "_fusegen_export.json").read_text())
    (out / "_fusegen_export.json").write_text(json.dumps({**marker, "status": "writing"}))
    assert "the export did not finish (status 'writing')" in problems_of(out)


def test_only_the_first_problems_are_kept_but_all_are_counted(copy_of):
    out = copy_of("ms-swift")
    edit_jsonl(out / "train.jsonl", lambda rows: rows.extend(rows * 10))
    report = validate(str(out), cap=5)
    assert (len(report.problems.first), report.problems.count > 5) == (5, True)
