"""Ingest's identity of the local images its records name (fusegen issue 19, defect 9).

The workers that read the images record them (`io/corpus.read_entry`, in each row's `_read`), the
receipts carry them into the shard markers, the manifest keeps their digest, and the runner checks them
again before it skips ingest (`runner._decide` -> `Ingest.changed_reads`). The worker and driver halves run
here without Ray, as the runner calls them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from pipeline.config import to_dict
from pipeline.io.commit import ShardCommitter, rewrite_parts, write_pieces
from pipeline.io.corpus import corpus_root, plan_corpus, read_jsonl_shard
from pipeline.io.dedup import FirstSeen
from pipeline.io.fs import RunFS
from pipeline.io.manifest import (
    MANIFEST,
    aggregate_markers,
    output_fingerprint,
    reads_summary,
    recorded_reads,
)
from pipeline.io.shards import tag_rows
from pipeline.runner import _decide
from pipeline.stages.ingest import Ingest, IngestConfig, ingest_batch

FP = "f" * 24
SKIPPED = ("skipped: complete with the same fingerprint", True)


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def make_corpus(root: Path) -> Path:
    """c.jsonl naming img/cat.png, img/dog.png (twice), a missing img/gone.png, and a row with no image."""
    (root / "img").mkdir(parents=True)
    (root / "img" / "cat.png").write_bytes(png((200, 10, 10)))
    (root / "img" / "dog.png").write_bytes(png((10, 200, 10)))
    records = [{"doc_id": "a", "text": "A cat.", "image": "img/cat.png"},
               {"doc_id": "b", "text": "A dog.", "image": "img/dog.png"},
               {"doc_id": "c", "text": "The dog again.", "image": "img/dog.png"},
               {"doc_id": "d", "text": "Gone.", "image": "img/gone.png"},
               {"doc_id": "e", "text": "No picture."}]
    (root / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root / "c.jsonl"


def stage_for(corpus: Path, run: Path, mode: str = "auto") -> Ingest:
    return Ingest(IngestConfig(path=str(corpus), identity=mode), SimpleNamespace(run_uri=str(run)))


def run_ingest(corpus: Path, run: Path, mode: str = "auto") -> dict:
    """Ingest's worker half (`ingest_batch`, `write_pieces`) and driver half (the committer, then the
    manifest as the runner completes it); returns the manifest."""
    stage, run_fs = stage_for(corpus, run, mode), RunFS.from_uri(str(run))
    (spec,) = plan_corpus(str(corpus), stage.config.columns, 10_000)
    table = tag_rows(read_jsonl_shard(spec, None), spec.shard)
    out = ingest_batch(table, to_dict(stage.config), str(run), corpus_root(str(corpus)))
    progress = SimpleNamespace(update=lambda n, rows: None)
    committer = ShardCommitter(run_fs, stage, "01_ingest", [spec], progress, FirstSeen.local(stage.dedup).decide,
                               lambda *args: rewrite_parts(str(run), "01_ingest", "01_ingest", *args))
    committer.add(write_pieces(out, str(run), stage, "01_ingest", "01_ingest"))
    committer.finish()
    _, _, markers = aggregate_markers(run_fs, "01_ingest")
    manifest = {"stage": "ingest", "fingerprint": FP, "status": "complete",
                "read": reads_summary(recorded_reads(markers))}
    run_fs.write_json(f"01_ingest/{MANIFEST}", manifest)
    return manifest


def decide(corpus: Path, run: Path, mode: str = "auto") -> tuple[str, bool]:
    stage = stage_for(corpus, run, mode)
    return _decide(RunFS.from_uri(str(run)), stage, "01_ingest", FP, stage.input_identity())


@pytest.fixture
def corpus(tmp_path) -> Path:
    return make_corpus(tmp_path / "corpus")


def test_the_markers_record_exactly_the_images_the_records_name(corpus, tmp_path):
    (corpus.parent / "img" / "unrelated.png").write_bytes(png((1, 2, 3)))
    manifest = run_ingest(corpus, tmp_path / "run")
    assert manifest["read"]["files"] == ["img/cat.png", "img/dog.png", "img/gone.png"]
    (marker,) = [json.loads(p.read_text()) for p in (tmp_path / "run" / "01_ingest" / "_parts").glob("*.json")]
    by_path = {e["path"]: e for e in marker["read"]}
    cat = (corpus.parent / "img" / "cat.png").read_bytes()
    import hashlib

    assert (by_path["img/cat.png"]["size"], by_path["img/cat.png"]["sha256"]) == (
        len(cat), hashlib.sha256(cat).hexdigest())
    assert by_path["img/gone.png"] == {"path": "img/gone.png", "missing": True}
    # Parts hold no `_read` column: it is internal.
    part = next((tmp_path / "run" / "01_ingest").glob("part-*.parquet"))
    import pyarrow.parquet as pq

    assert "_read" not in pq.read_schema(part).names


def test_files_nobody_read_beside_the_corpus_change_nothing(corpus, tmp_path):
    run_ingest(corpus, tmp_path / "run")
    before = stage_for(corpus, tmp_path / "run").input_identity()
    (corpus.parent / "img" / "unrelated.png").write_bytes(png((1, 2, 3)))
    (corpus.parent / "more").mkdir()
    (corpus.parent / "more" / "x.jpg").write_bytes(b"not even an image")
    assert stage_for(corpus, tmp_path / "run").input_identity() == before
    assert decide(corpus, tmp_path / "run") == SKIPPED


def test_an_edited_image_a_record_names_reruns_ingest(corpus, tmp_path):
    run_ingest(corpus, tmp_path / "run")
    (corpus.parent / "img" / "dog.png").write_bytes(png((10, 10, 200)))
    assert decide(corpus, tmp_path / "run") == ("re-run: files read by the last run changed: img/dog.png", False)
    assert not (tmp_path / "run" / "01_ingest").exists(), "the stale output is wiped"


def test_a_named_image_that_appears_or_disappears_reruns_ingest(corpus, tmp_path):
    run_ingest(corpus, tmp_path / "run")
    (corpus.parent / "img" / "gone.png").write_bytes(png((5, 5, 5)))
    (corpus.parent / "img" / "cat.png").unlink()
    assert decide(corpus, tmp_path / "run") == (
        "re-run: files read by the last run changed: img/cat.png (removed), img/gone.png", False)


def test_the_same_corpus_and_images_copied_elsewhere_with_new_mtimes_are_the_same_input(corpus, tmp_path):
    """`ray job submit --working-dir .` unpacks a fresh copy (new mtimes): ingest must not re-run."""
    run_ingest(corpus, tmp_path / "run")
    copy = tmp_path / "copy"
    shutil.copytree(corpus.parent, copy)
    for path in copy.rglob("*"):
        os.utime(path, ns=(7, 7))
    assert decide(copy / "c.jsonl", tmp_path / "run") == SKIPPED


def test_under_stat_identity_a_touched_image_reruns_ingest(corpus, tmp_path):
    run_ingest(corpus, tmp_path / "run", mode="stat")
    assert decide(corpus, tmp_path / "run", "stat") == SKIPPED
    os.utime(corpus.parent / "img" / "cat.png", ns=(5, 5))
    assert decide(corpus, tmp_path / "run", "stat") == ("re-run: files read by the last run changed: img/cat.png",
                                                        False)


def test_the_images_read_enter_what_the_next_stage_chains_on(corpus, tmp_path):
    first = run_ingest(corpus, tmp_path / "one")
    assert output_fingerprint(FP, first) != FP
    assert output_fingerprint(FP, run_ingest(corpus, tmp_path / "two")) == output_fingerprint(FP, first)
    (corpus.parent / "img" / "cat.png").write_bytes(png((0, 0, 0)))
    assert output_fingerprint(FP, run_ingest(corpus, tmp_path / "three")) != output_fingerprint(FP, first)
    assert output_fingerprint(FP, {"fingerprint": FP}) == FP
