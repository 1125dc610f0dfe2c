"""pipeline/io/image_store.py garbage collection and `fusegen gc`: a stored image stays while any Parquet
file of the run refers to it (parts, rejects, lists of references, index parts); the rest goes."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.io.fs import RunFS
from pipeline.io.image_store import IMAGE_REF, ImageStore, collect_store_garbage, store_garbage


def _store(run_fs: RunFS, n: int) -> list[dict]:
    store = ImageStore(run_fs)
    return [store.put(f"image {i}".encode(), "jpeg", 10 + i, 10) for i in range(n)]


def _write(run_fs: RunFS, rel: str, refs: list[dict | None], lists: list[list[dict]] | None = None) -> None:
    cols = {"id": [str(i) for i in range(len(refs))], "image": pa.array(refs, IMAGE_REF)}
    if lists is not None:
        cols["neg_images"] = pa.array(lists, pa.list_(IMAGE_REF))
    run_fs.write_parquet(rel, pa.table(cols))


def test_only_unreferenced_images_and_dead_temporaries_are_removed(tmp_path):
    run_fs = RunFS.from_uri(str(tmp_path))
    refs = _store(run_fs, 6)
    _write(run_fs, "01_ingest/part-000000-000000-000.parquet", [refs[0], None])
    _write(run_fs, "01_ingest/_rejects/part-000000-000000-000.parquet", [refs[1]])
    _write(run_fs, "08_negatives/part-000000-000000-000.parquet", [refs[0]], [[refs[2], refs[0]]])
    _write(run_fs, "_index/gme-abc/part-000000-000000-000.parquet", [refs[3]])
    run_fs.write_bytes("_images/ab/.half-written.tmp", b"x")
    store = ImageStore(run_fs)
    garbage = collect_store_garbage(run_fs)
    assert garbage.files == sorted([store.rel(refs[4]), store.rel(refs[5]), "_images/ab/.half-written.tmp"])
    assert garbage.bytes == len(b"image 4") + len(b"image 5") + 1
    assert [store.exists(r) for r in refs] == [True, True, True, True, False, False]
    assert store_garbage(run_fs).files == []


def test_a_run_dir_without_a_store_has_no_garbage(tmp_path):
    assert store_garbage(RunFS.from_uri(str(tmp_path))).files == []


@given(used=st.lists(st.booleans(), min_size=1, max_size=12))
@settings(max_examples=25, deadline=None)
def test_what_stays_is_exactly_what_is_referenced(tmp_path_factory, used):
    run_fs = RunFS.from_uri(str(tmp_path_factory.mktemp("run")))
    refs = _store(run_fs, len(used))
    kept = [r for r, u in zip(refs, used) if u]
    _write(run_fs, "02_x/part-0.parquet", kept or [None])
    collect_store_garbage(run_fs)
    assert sorted(ImageStore(run_fs).listing()) == sorted(r["sha256"] for r in kept)


def test_cli_dry_run_lists_and_keeps_then_gc_removes(tmp_path, capsys):
    run_fs = RunFS.from_uri(str(tmp_path))
    (tmp_path / "run.yaml").write_text("pipeline: gme\n")
    refs = _store(run_fs, 2)
    _write(run_fs, "01_ingest/part-0.parquet", [refs[0]])
    assert main(["gc", str(tmp_path), "--dry-run"]) == 0
    assert "would remove 1 file(s)" in capsys.readouterr().out
    assert ImageStore(run_fs).exists(refs[1])
    assert main(["gc", str(tmp_path)]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out
    assert not ImageStore(run_fs).exists(refs[1]) and ImageStore(run_fs).exists(refs[0])


def test_cli_refuses_a_folder_that_is_not_a_run_dir(tmp_path, capsys):
    assert main(["gc", str(tmp_path)]) == 2
    assert "not a fusegen run directory" in capsys.readouterr().err


def test_cli_also_cleans_the_runs_own_index_store_of_pool_images_no_index_refers_to(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("pipeline: gme\n")
    index_fs = RunFS.from_uri(str(tmp_path / "_index"))
    live, stale = _store(index_fs, 2)
    _write(index_fs, "image-live/part-000000-000000-000.parquet", [live])
    # `image-stale` was an index of another pool; pruning removed its folder, its images stayed.
    assert main(["gc", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "index image store: would remove 1 file(s)" in out and ImageStore(index_fs).rel(stale) in out
    assert main(["gc", str(tmp_path)]) == 0
    assert (ImageStore(index_fs).exists(live), ImageStore(index_fs).exists(stale)) == (True, False)


def test_names_are_capped_by_keep_but_count_and_bytes_cover_every_garbage_file(tmp_path):
    run_fs = RunFS.from_uri(str(tmp_path))
    refs = _store(run_fs, 40)
    _write(run_fs, "02_x/part-0.parquet", refs[:10], [[r] for r in refs[10:20]])
    run_fs.write_bytes("_images/.orphan.tmp", b"xy")  # a temporary beside the folders
    everything = store_garbage(run_fs)
    assert everything.count == 21 and len(everything.files) == 21
    assert everything.files == sorted(everything.files) and "_images/.orphan.tmp" in everything.files
    capped = collect_store_garbage(run_fs, keep=3)
    assert (capped.count, capped.bytes, capped.files) == (21, everything.bytes, everything.files[:3])
    assert sorted(ImageStore(run_fs).listing()) == sorted(r["sha256"] for r in refs[:20])


def test_references_spread_over_many_batches_and_files_all_count(tmp_path):
    run_fs = RunFS.from_uri(str(tmp_path))
    store = ImageStore(run_fs)
    refs = [store.put(f"img {i}".encode(), "png", 1, 1) for i in range(300)]
    for k in range(3):  # each file refers to a third; an unreadable sha (wrong length) refers to nothing
        chunk = refs[k * 100:(k + 1) * 100]
        chunk[0] = dict(chunk[0], sha256=chunk[0]["sha256"][:10]) if k == 2 else chunk[0]
        _write(run_fs, f"0{k}_s/part-0.parquet", chunk)
    garbage = collect_store_garbage(run_fs)
    assert garbage.files == [store.rel(refs[200])]
