"""pipeline/runner.py: which run-local index folders survive a finished run (no Ray)."""

from __future__ import annotations

from types import SimpleNamespace

from pipeline.io.fs import RunFS
from pipeline.io.indexes import IndexSpec
from pipeline.runner import live_indexes, prune_indexes


class Declares:
    """A stage that declares fixed indexes."""

    def __init__(self, name: str, *specs: IndexSpec) -> None:
        self.name, self.specs = name, specs

    def indexes(self):
        return self.specs


def spec(name: str, source: str | None, model: str) -> IndexSpec:
    return IndexSpec(name, source, None, {"model": model})


def test_live_indexes_cover_every_stage_skipped_or_not_and_shared_ones_once():
    gme = spec("gme", "ingest", "gme-2b")
    stages = [Declares("ingest"), Declares("consistency", spec("text", "ingest", "minilm")),
              Declares("images", spec("image", None, "clip")), Declares("gme_score", gme), Declares("negatives", gme)]
    live = live_indexes(stages, ["fp-ingest", "fp-c", "fp-i", "fp-g", "fp-n"])
    assert live == {f"text-{spec('text', 'ingest', 'minilm').key('fp-ingest')}",
                    f"image-{spec('image', None, 'clip').key('')}", f"gme-{gme.key('fp-ingest')}"}


def test_prune_removes_only_index_folders_no_stage_declares(tmp_path):
    uri = str(tmp_path / "_index")
    fs = RunFS.from_uri(uri)
    for folder in ("gme-new", "gme-old", "text-keep"):
        fs.write_json(f"{folder}/_manifest.json", {"stage": "x:pool"})
    fs.write_bytes("_images/ab/abcd.png", b"png")  # the pool's image store: not an index folder
    prune_indexes(SimpleNamespace(index_uri=uri), {"gme-new", "text-keep"})
    assert fs.list_dirs("") == ["_images", "gme-new", "text-keep"]
