"""MegaPairs runs through the exporters: `--format megapairs` (the released layout), ms-swift and MMEB on
MegaPairs rows, formats that cannot take them, and `fusegen validate` on all of it (round trips and
planted faults)."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.errors import ExportError
from pipeline.exporters import export_run
from pipeline.exporters.source import open_run
from pipeline.exporters.validate import validate
from tests.support.gme_run import export_rows
from tests.support.megapairs_run import make_megapairs_run


@pytest.fixture(scope="module")
def mp_run(tmp_path_factory):
    """8 pairs over 8 query images, 3 instructions and 1 + 3 negatives each, ~40% of queries in validation."""
    return make_megapairs_run(tmp_path_factory.mktemp("mp"), rows=8, validation_ratio=0.4)


@pytest.fixture(scope="module")
def mp_rows(mp_run) -> dict[str, dict]:
    return {r["id"]: {**r, "split": split} for split, rows in export_rows(mp_run).items() for r in rows}


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_open_run_says_which_triplets_the_run_holds(mp_run):
    source = open_run(str(mp_run))
    assert (source.schema, source.text_field, list(source.splits)) == ("megapairs", "q_text", ["train", "validation"])


def test_megapairs_layout_is_annotation_jsonl_with_relative_image_paths(mp_run, mp_rows, tmp_path):
    out = tmp_path / "out"
    marker = export_run(str(mp_run), "megapairs", str(out))
    records = {s: lines(out / "annotation" / f"{s}.jsonl") for s in ("train", "validation")}
    assert {s: len(r) for s, r in records.items()} == marker["splits"]
    for split, recs in records.items():
        for rec in recs:
            row = mp_rows[rec["id"]]
            assert (rec["q_text"], rec["hn_ids"], row["split"]) == (row["q_text"], row["hn_ids"], split)
            assert rec["hns"][0] == rec["q_img"] and rec["t_img"] not in rec["hns"]
            for path in [rec["q_img"], rec["t_img"], *rec["hns"]]:
                assert path.startswith("images/") and (out / path).read_bytes()
    first = records["train"][0]
    assert (out / first["t_img"]).read_bytes() == mp_rows[first["id"]]["t_img"]["bytes"]


def test_megapairs_round_trip_validates(mp_run, tmp_path):
    out = tmp_path / "out"
    export_run(str(mp_run), "megapairs", str(out))
    report = validate(str(out))
    assert (report.ok, report.format, dict(report.rows)) == (True, "megapairs", {"train": 5, "validation": 3})
    assert report.problems.first == []


def test_a_q_texts_run_writes_q_texts_lines(tmp_path):
    run = make_megapairs_run(tmp_path, rows=4, validation_ratio=0.0, text_field="q_texts")
    export_run(str(run), "megapairs", str(tmp_path / "out"))
    rec = lines(tmp_path / "out" / "annotation" / "train.jsonl")[0]
    assert ("q_texts" in rec, "q_text" in rec) == (True, False)
    assert validate(str(tmp_path / "out")).ok


def test_validate_checks_the_megapairs_run_dir_itself(mp_run):
    report = validate(str(mp_run))
    assert (report.ok, report.format, sum(report.rows.values())) == (True, "megapairs", 8)


def test_validate_catches_a_planted_target_among_the_negatives(mp_run, tmp_path):
    out = tmp_path / "out"
    export_run(str(mp_run), "megapairs", str(out))
    path = out / "annotation" / "train.jsonl"
    recs = lines(path)
    recs[1]["hns"][2] = recs[1]["t_img"]  # the target's file, under a negative's id
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    report = validate(str(out))
    assert not report.ok
    assert any("annotation/train.jsonl:2: negative 2 is the target image" in p for p in report.problems.first)


def test_validate_catches_a_missing_image_file(mp_run, tmp_path):
    out = tmp_path / "out"
    export_run(str(mp_run), "megapairs", str(out))
    target = lines(out / "annotation" / "validation.jsonl")[0]["t_img"]
    (out / target).unlink()
    report = validate(str(out))
    assert not report.ok and any(f"image {out / target} cannot be read" in p for p in report.problems.first)


def test_validate_catches_a_query_image_in_both_splits(mp_run, tmp_path):
    out = tmp_path / "out"
    export_run(str(mp_run), "megapairs", str(out))
    train, val = out / "annotation" / "train.jsonl", out / "annotation" / "validation.jsonl"
    moved = {**lines(train)[0], "id": "moved"}
    val.write_text(val.read_text() + json.dumps(moved) + "\n")
    problems = validate(str(out)).problems.first
    assert any(f"query {moved['query_id']!r} has rows in train and validation" in p for p in problems)


def test_ms_swift_on_megapairs_rows_is_image_plus_instruction_to_image(mp_run, mp_rows, tmp_path):
    out = tmp_path / "out"
    marker = export_run(str(mp_run), "ms-swift", str(out))
    rec = lines(out / "train.jsonl")[0]
    row = mp_rows[rec["id"]]
    assert rec["messages"] == [{"role": "user", "content": "<image>" + row["q_text"][0]}]
    assert rec["positive_messages"] == [[{"role": "user", "content": "<image>"}]]
    assert (out / rec["images"][0]).read_bytes() == row["q_img"]["bytes"]
    assert (out / rec["positive_images"][0][0]).read_bytes() == row["t_img"]["bytes"]
    assert [(out / p[0]).read_bytes() for p in rec["negative_images"]] == [h["bytes"] for h in row["hns"]]
    assert rec["negative_messages"] == [[{"role": "user", "content": "<image>"}]] * len(row["hns"])
    assert (marker["options"]["negatives_kept"], marker["options"]["instructions"]) == (4, "first")
    assert validate(str(out)).ok


def test_ms_swift_all_instructions_writes_one_line_per_instruction(mp_run, tmp_path):
    out = tmp_path / "out"
    marker = export_run(str(mp_run), "ms-swift", str(out), instructions="all")
    recs = lines(out / "train.jsonl")
    assert (marker["splits"]["train"], marker["source_rows"]["train"]) == (15, 5)
    assert [r["id"] for r in recs[:3]] == [f"{recs[0]['query_id']}~{recs[0]['doc_id']}#{k}" for k in range(3)]
    report = validate(str(out))
    assert (report.ok, dict(report.rows)) == (True, {"train": 15, "validation": 9})


def test_mmeb_on_megapairs_rows_takes_the_hardest_mined_negative_never_the_query(mp_run, mp_rows, tmp_path):
    out = tmp_path / "out"
    export_run(str(mp_run), "mmeb", str(out))
    rows = pq.read_table(out / "fusegen" / "original-00000.parquet").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(i for i, r in mp_rows.items() if r["split"] == "train")
    for rec in rows:
        row = mp_rows[rec["id"]]
        assert rec["qry"] == "<|image_1|>\n" + row["q_text"][0]
        assert rec["pos_text"] == rec["neg_text"] == "<|image_1|>\nRepresent the given image."
        assert (rec["neg_doc_id"], rec["query_id"]) == (row["hn_ids"][1], row["query_id"])
        assert (out / rec["neg_image_path"]).read_bytes() == row["hns"][1]["bytes"]
        assert (out / rec["pos_image_path"]).read_bytes() == row["t_img"]["bytes"]
    assert validate(str(out)).ok


@pytest.mark.parametrize("fmt", ["gme", "mbeir"])
def test_formats_that_cannot_take_megapairs_rows_say_so(mp_run, tmp_path, fmt):
    with pytest.raises(ExportError, match=f"--format {fmt} cannot take this run's megapairs triplets"):
        export_run(str(mp_run), fmt, str(tmp_path / "out"))


def test_megapairs_format_refuses_a_gme_run_and_instructions_apply_to_megapairs_only(gme_run, tmp_path):
    with pytest.raises(ExportError, match="--format megapairs cannot take this run's gme triplets"):
        export_run(str(gme_run), "megapairs", str(tmp_path / "a"))
    with pytest.raises(ExportError, match="--instructions applies to MegaPairs runs only"):
        export_run(str(gme_run), "ms-swift", str(tmp_path / "b"), instructions="all")


def test_cli_export_megapairs_then_validate(mp_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(mp_run), "--format", "megapairs", "--out", str(out)]) == 0
    assert f"export: megapairs to {out}: train 5, validation 3 rows" in capsys.readouterr().out
    assert main(["validate", str(out)]) == 0
    assert "valid: megapairs export" in capsys.readouterr().out


def test_a_rerun_export_is_detected_by_fingerprint(mp_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mp_run, run)
    out = tmp_path / "out"
    export_run(str(run), "megapairs", str(out))
    manifest = json.loads((run / "export" / "_manifest.json").read_text())
    (run / "export" / "_manifest.json").write_text(json.dumps({**manifest, "fingerprint": "other"}))
    assert any("fingerprint differs" in p for p in validate(str(out)).problems.first)
