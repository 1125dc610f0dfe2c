"""pipeline/exporters (outdir.py, source.py): which runs may be exported where, and the export marker."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from pipeline.errors import ExportError
from pipeline.exporters import export_run
from pipeline.exporters.outdir import MARKER, OutDir, image_ext
from tests.support.run_dir import make_run_dir


@pytest.fixture
def run_copy(gme_run, tmp_path):
    """A private copy of the finished run (tests below edit it)."""
    copy = tmp_path / "run"
    shutil.copytree(gme_run, copy)
    return copy


def marker(out) -> dict:
    return json.loads((out / MARKER).read_text())


def test_the_marker_names_the_run_format_options_and_row_counts(run_copy, tmp_path):
    export_run(str(run_copy), "ms-swift", str(tmp_path / "out"), negatives=2)
    m = marker(tmp_path / "out")
    assert (m["format"], m["run_dir"], m["status"], m["options"]["negatives"], m["run_fingerprint"]) == (
        "ms-swift", str(run_copy), "complete", 2, "fp-export",
    )
    assert sum(m["splits"].values()) == 8 and m["files"] == ["train.jsonl", "validation.jsonl", "README.md"]


@pytest.mark.parametrize(("stage", "status"), [("negatives", "running"), ("export", "failed")])
def test_a_run_that_is_not_finished_is_refused_naming_the_stage(run_copy, tmp_path, stage, status):
    folder = "export" if stage == "export" else "08_negatives"
    manifest = json.loads((run_copy / folder / "_manifest.json").read_text())
    (run_copy / folder / "_manifest.json").write_text(json.dumps({**manifest, "status": status}))
    with pytest.raises(ExportError, match=f"stage {stage} is '{status}', not complete"):
        export_run(str(run_copy), "ms-swift", str(tmp_path / "out"))


def test_a_stage_that_never_started_is_named(run_copy, tmp_path):
    shutil.rmtree(run_copy / "07_gme_score")
    with pytest.raises(ExportError, match="stage gme_score is 'not started'"):
        export_run(str(run_copy), "mmeb", str(tmp_path / "out"))


def test_a_folder_that_is_no_run_is_refused(tmp_path):
    with pytest.raises(ExportError, match="no run.yaml here"):
        export_run(str(tmp_path), "ms-swift", str(tmp_path / "out"))


def test_a_passthrough_export_is_refused_with_what_to_set(tmp_path):
    run = make_run_dir(tmp_path)
    meta = yaml.safe_load((run / "run.yaml").read_text())
    (run / "run.yaml").write_text(yaml.safe_dump({**meta, "export": {"schema": "passthrough"}}))
    with pytest.raises(ExportError, match=r"holds no GME or MegaPairs triplets .*export.schema was 'passthrough'"):
        export_run(str(run), "ms-swift", str(tmp_path / "out"))


def test_an_out_dir_inside_the_run_is_refused(run_copy):
    with pytest.raises(ExportError, match="lies inside the run dir"):
        export_run(str(run_copy), "ms-swift", str(run_copy / "export" / "swift"))


def test_an_out_dir_holding_other_files_is_refused_without_force(run_copy, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="holds files that no fusegen export wrote; .* --force"):
        export_run(str(run_copy), "ms-swift", str(tmp_path / "out"))


def test_force_writes_over_other_files_and_leaves_them(run_copy, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    export_run(str(run_copy), "ms-swift", str(tmp_path / "out"), force=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine" and marker(tmp_path / "out")["status"] == "complete"


def test_an_out_dir_of_another_run_is_refused_naming_it(run_copy, gme_run, tmp_path):
    export_run(str(gme_run), "ms-swift", str(tmp_path / "out"))
    with pytest.raises(ExportError, match=f"holds the ms-swift export of run {gme_run}"):
        export_run(str(run_copy), "ms-swift", str(tmp_path / "out"))


def test_an_out_dir_of_another_format_is_refused(run_copy, tmp_path):
    export_run(str(run_copy), "mmeb", str(tmp_path / "out"))
    with pytest.raises(ExportError, match="holds the mmeb export"):
        export_run(str(run_copy), "ms-swift", str(tmp_path / "out"))


def test_forcing_over_another_format_removes_the_files_it_had_written(run_copy, tmp_path):
    export_run(str(run_copy), "mmeb", str(tmp_path / "out"))
    export_run(str(run_copy), "ms-swift", str(tmp_path / "out"), force=True)
    assert not (tmp_path / "out" / "fusegen").exists() or not list((tmp_path / "out" / "fusegen").iterdir())
    assert "dataset_config" not in (tmp_path / "out" / "README.md").read_text()  # ms-swift's README now


def test_the_same_run_exports_again_into_its_folder(run_copy, tmp_path):
    first = export_run(str(run_copy), "mbeir", str(tmp_path / "out"))
    again = export_run(str(run_copy), "mbeir", str(tmp_path / "out"))
    assert (again["splits"], again["files"]) == (first["splits"], first["files"])


def test_a_re_export_removes_images_no_row_uses_any_more(run_copy, tmp_path):
    out = tmp_path / "out"
    export_run(str(run_copy), "ms-swift", str(out))
    before = {p for p in (out / "images").rglob("*") if p.is_file()}
    # An image only rows of the earlier export used (the run was re-run since, say).
    stale = out / "images" / "ff" / ("f" * 32 + ".png")
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"\x89PNG old")
    export_run(str(run_copy), "ms-swift", str(out))
    after = {p for p in (out / "images").rglob("*") if p.is_file()}
    assert (after, marker(out)["images"]) == (before, len(before))


def test_a_crashed_export_leaves_a_writing_marker_the_rerun_recognises(run_copy, tmp_path, monkeypatch):
    from pipeline.exporters import ms_swift

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ms_swift, "record", boom)
    with pytest.raises(RuntimeError):
        export_run(str(run_copy), "ms-swift", str(tmp_path / "out"))
    assert marker(tmp_path / "out")["status"] == "writing"
    monkeypatch.undo()
    assert export_run(str(run_copy), "ms-swift", str(tmp_path / "out"))["status"] == "complete"


def test_legacy_applies_to_ms_swift_only(run_copy, tmp_path):
    with pytest.raises(ExportError, match="--ms-swift-legacy applies to --format ms-swift only"):
        export_run(str(run_copy), "mbeir", str(tmp_path / "out"), legacy=True)


@pytest.mark.parametrize(
    ("data", "ext"),
    [(b"\x89PNG\r\n\x1a\nrest", "png"), (b"\xff\xd8\xff\xe0", "jpg"), (b"RIFF0000WEBPVP8 ", "webp"), (b"GIF89a", "gif")],
)
def test_image_files_are_named_by_their_magic_bytes(data, ext):
    assert image_ext(data, "x.bin") == ext


@pytest.mark.parametrize("name", ["../victim.txt", "sub/../../victim.txt", "{root}/victim.txt", "link/victim.txt"])
def test_a_re_export_removes_no_file_outside_the_out_dir_whatever_the_marker_names(run_copy, tmp_path, name):
    """`_fusegen_export.json` lives in a folder anyone may write: a listed name that leads out of the
    out dir (`..`, an absolute path, a link to another folder) is left alone."""
    out = tmp_path / "exports" / "out"
    export_run(str(run_copy), "ms-swift", str(out), negatives=2)
    victim = tmp_path / "exports" / "victim.txt"
    victim.write_text("not the export's")
    (out / "link").symlink_to(victim.parent, target_is_directory=True)
    stale = out / "old.jsonl"
    stale.write_text("{}\n")
    m = marker(out)
    m["files"] += [name.format(root=victim.parent), "old.jsonl"]
    (out / MARKER).write_text(json.dumps(m))
    export_run(str(run_copy), "ms-swift", str(out), negatives=2)
    assert victim.read_text() == "not the export's"
    assert not stale.exists()


def test_images_are_written_and_counted_once_and_the_scratch_is_gone_after_finish_or_failure(tmp_path):
    from pipeline.exporters.outdir import _SEEN

    out = OutDir(str(tmp_path / "out"), "/run", "gme", {})
    first = out.image({"bytes": b"\x89PNG\r\n\x1a\nA", "path": "a.png"})
    again = out.image({"bytes": b"\x89PNG\r\n\x1a\nA", "path": "other.png"})
    other = out.image({"bytes": b"\x89PNG\r\n\x1a\nB", "path": "b.png"})
    assert first == again != other and (out.image_count, out.image_bytes) == (2, 18)
    assert (tmp_path / "out" / _SEEN).exists()
    assert out.finish({})["images"] == 2 and not (tmp_path / "out" / _SEEN).exists()
    failed = OutDir(str(tmp_path / "out"), "/run", "gme", {})
    failed.abandon()
    assert not (tmp_path / "out" / _SEEN).exists()
