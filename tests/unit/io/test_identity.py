"""Input identity (io/corpus.files_identity, and local_images_identity for an image pool's folder) and the
re-run message it gives (io/manifest.inputs_diff). Ingest's identity of the images its records name is in
test_read_identity.py."""

from __future__ import annotations

import os

from pipeline.io.corpus import files_identity, local_images_identity
from pipeline.io.manifest import inputs_diff


def corpus(tmp_path, **files: str):
    folder = tmp_path / "corpus"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.jsonl").write_text(text)
    return folder


def test_identity_names_files_relative_to_the_input_folder(tmp_path):
    folder = corpus(tmp_path, a='{"text": "x"}\n', b='{"text": "y"}\n')
    assert [f["path"] for f in files_identity(str(folder))["files"]] == ["a.jsonl", "b.jsonl"]


def test_identity_is_the_same_for_a_copy_of_the_same_files_elsewhere(tmp_path):
    first = files_identity(str(corpus(tmp_path / "one", a="same\n")), "hash")
    second = files_identity(str(corpus(tmp_path / "two", a="same\n")), "hash")
    assert first == second


def test_editing_a_file_changes_its_hash_identity_and_the_diff_names_it(tmp_path):
    folder = corpus(tmp_path, a="one\n", b="two\n")
    before = files_identity(str(folder), "hash")
    (folder / "b.jsonl").write_text("TWO\n")
    after = files_identity(str(folder), "hash")
    assert before != after
    assert inputs_diff(before, after) == ["input files changed: b.jsonl"]


def test_stat_identity_sees_a_touched_file(tmp_path):
    folder = corpus(tmp_path, a="one\n")
    before = files_identity(str(folder), "stat")
    os.utime(folder / "a.jsonl", ns=(1, 1))
    assert "mtime_ns" in before["files"][0] and files_identity(str(folder), "stat") != before


def test_added_and_removed_files_are_named(tmp_path):
    folder = corpus(tmp_path, a="one\n")
    before = files_identity(str(folder))
    (folder / "a.jsonl").unlink()
    (folder / "c.jsonl").write_text("three\n")
    assert inputs_diff(before, files_identity(str(folder))) == ["input files changed: c.jsonl (added), a.jsonl (removed)"]


def test_unchanged_inputs_give_no_diff(tmp_path):
    folder = corpus(tmp_path, a="one\n")
    assert inputs_diff(files_identity(str(folder)), files_identity(str(folder))) == []


# --- image files under a folder (an image pool; ingest no longer walks its corpus folder) -----------------


def images_identity(folder, mode="auto", exclude=()):
    """The image pool's identity of the images under `folder` (as io/image_pool calls it), in the shape
    `inputs_diff` compares."""
    images = local_images_identity([str(folder / "a.jsonl")], exclude, mode)
    return {"images": images} if images else {}


def with_images(tmp_path):
    folder = corpus(tmp_path, a='{"text": "x", "image": "images/cat.png"}\n')
    (folder / "images").mkdir()
    (folder / "images" / "cat.png").write_bytes(b"png-one")
    (folder / "images" / "notes.txt").write_text("not an image")
    return folder


def test_an_image_edited_in_place_changes_the_identity_and_the_diff_names_it(tmp_path):
    folder = with_images(tmp_path)
    before = images_identity(folder)
    assert [f["path"] for f in before["images"]["files"]] == ["images/cat.png"]
    (folder / "images" / "cat.png").write_bytes(b"png-two")
    os.utime(folder / "images" / "cat.png", ns=(1, 1))
    after = images_identity(folder)
    assert inputs_diff(before, after) == ["local images changed: images/cat.png"]
    (folder / "images" / "dog.jpg").write_bytes(b"jpg")
    assert inputs_diff(after, images_identity(folder)) == [
        "local images changed: images/dog.jpg (added)"]


def test_run_dirs_stage_folders_hidden_and_excluded_folders_are_not_identified(tmp_path):
    folder = with_images(tmp_path)
    before = images_identity(folder, exclude=(str(folder / "mine"),))
    # A run dir kept beside the corpus: its image store changes with every run.
    for run, marker in (("runs/demo", "run.yaml"), ("runs/demo/01_ingest", "_manifest.json"), ("mine", None),
                        (".cache", None)):
        (folder / run / "_images").mkdir(parents=True, exist_ok=True)
        (folder / run / "_images" / "x.jpg").write_bytes(b"stored")
        if marker:
            (folder / run / marker).write_text("{}")
    assert images_identity(folder, exclude=(str(folder / "mine"),)) == before


def test_many_local_images_are_identified_by_a_digest(tmp_path, monkeypatch):
    import pipeline.io.corpus as corpus_module

    monkeypatch.setattr(corpus_module, "LISTED_IMAGES", 2)
    folder = with_images(tmp_path)
    for name in ("b.png", "c.png"):
        (folder / "images" / name).write_bytes(b"img")
    before = images_identity(folder)
    assert before["images"]["count"] == 3 and len(before["images"]["sha256"]) == 64
    (folder / "images" / "b.png").write_bytes(b"IMG")
    after = images_identity(folder)
    assert inputs_diff(before, after) == ["local images changed: 3 -> 3 files"]


def test_local_images_copied_elsewhere_keep_their_identity(tmp_path):
    """`ray job submit --working-dir .` unpacks a fresh copy (new mtimes) whenever the working dir changes:
    the same pool images must not rebuild the pool."""
    import shutil

    folder = with_images(tmp_path)
    before = images_identity(folder)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    for path in copy.rglob("*"):
        os.utime(path, ns=(7, 7))
    assert images_identity(copy) == before


def test_stat_identity_sees_a_touched_local_image(tmp_path):
    folder = with_images(tmp_path)
    before = images_identity(folder, "stat")
    os.utime(folder / "images" / "cat.png", ns=(5, 5))
    assert images_identity(folder, "stat") != before


def test_a_folder_without_images_has_no_image_identity(tmp_path):
    assert images_identity(corpus(tmp_path, a="one\n")) == {}


def test_the_corpus_identity_leaves_images_beside_the_corpus_out(tmp_path):
    """Ingest identifies the images its records name from what its workers read (test_read_identity.py): a
    folder of unrelated images written beside the corpus must not re-run ingest and all after it."""
    folder = with_images(tmp_path)
    before = files_identity(str(folder / "a.jsonl"))
    (folder / "unrelated").mkdir()
    (folder / "unrelated" / "x.png").write_bytes(b"png")
    (folder / "images" / "cat.png").write_bytes(b"png-two")
    assert files_identity(str(folder / "a.jsonl")) == before == {"files": before["files"]}
