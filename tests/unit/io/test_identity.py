"""Input identity (io/corpus.files_identity) and the re-run message it gives (io/manifest.inputs_diff)."""

from __future__ import annotations

import os

from pipeline.io.corpus import files_identity
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
