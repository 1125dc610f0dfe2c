"""samples/megapairs/: the committed MegaPairs sample pool is what samples/make_megapairs_pool.py draws, and
the `pool` stage answers it as its README says (50 kept, one duplicate filtered, one broken file rejected)."""

from __future__ import annotations

import io
import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline.config import build
from pipeline.io.dedup import FirstSeen
from pipeline.io.shards import tag_rows
from pipeline.stage import run_steps
from pipeline.stages.mp_pool import MegaPool, MegaPoolConfig
from samples.make_megapairs_pool import BROKEN, DUPLICATE, SCENES
from samples.make_megapairs_pool import build as build_pool
from tests.support.ingest import commit_statuses


@pytest.fixture(scope="module")
def committed(repo_root):
    return repo_root / "samples" / "megapairs"


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    root = tmp_path_factory.mktemp("megapairs")
    build_pool(root)
    return root


def rows_of(root) -> list[dict]:
    return [json.loads(line) for line in (root / "pool.jsonl").read_text(encoding="utf-8").splitlines()]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_the_committed_rows_and_readme_are_what_the_script_writes(committed, rebuilt):
    assert (committed / "pool.jsonl").read_bytes() == (rebuilt / "pool.jsonl").read_bytes(), \
        "rerun `python -m samples.make_megapairs_pool` after editing the script"
    assert (committed / "README.md").read_text() == (rebuilt / "README.md").read_text()


def test_the_committed_images_are_the_script_s_drawings(committed, rebuilt):
    names = sorted(p.name for p in (committed / "images").iterdir())
    assert names == sorted(p.name for p in (rebuilt / "images").iterdir())
    # Pixels, not bytes: another zlib may compress the same drawing differently.
    drawn = [n for n in names if n != f"{BROKEN}.png"]
    assert [n for n in drawn if not np.array_equal(pixels(committed / "images" / n),
                                                   pixels(rebuilt / "images" / n))] == []


def test_a_rebuild_writes_the_same_bytes(rebuilt, tmp_path):
    build_pool(tmp_path)
    files = sorted(p.relative_to(rebuilt) for p in rebuilt.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert [f for f in files if (rebuilt / f).read_bytes() != (tmp_path / f).read_bytes()] == []


def test_the_duplicate_and_the_broken_file_are_what_the_readme_says(committed):
    images = committed / "images"
    copy, original = DUPLICATE
    assert (images / f"{copy}.png").read_bytes() == (images / f"{original}.png").read_bytes()
    whole = (images / "fruit_base.png").read_bytes()
    assert (images / f"{BROKEN}.png").read_bytes() == whole[: len(whole) // 2]


def test_every_scene_has_a_base_and_variants_with_one_attribute_changed(committed):
    rows = rows_of(committed)
    scenes = Counter(r["scene"] for r in rows if r["id"] not in (DUPLICATE[0], BROKEN))
    assert len(scenes) >= 8 and set(scenes.values()) == {5} and 40 <= sum(scenes.values()) <= 60
    for scene, (_, caption, base, variants) in SCENES.items():
        # One change each, and each a change the caption names.
        assert all(len(change) == 1 and change.items() - base.items() for _, change in variants), scene
        captions = [caption({**base, **change}) for _, change in [("base", {})] + variants]
        assert len(set(captions)) == len(captions), scene
    assert {r["license"] for r in rows} == {"CC0-1.0"} and all(r["caption"] for r in rows)


def test_the_pool_is_small(committed):
    sizes = [p.stat().st_size for p in (committed / "images").iterdir()]
    assert len(sizes) > 1 and sum(sizes) < 1.5 * 2**20
    for p in (committed / "images").iterdir():
        if p.name != f"{BROKEN}.png":
            assert all(128 <= side <= 224 for side in Image.open(io.BytesIO(p.read_bytes())).size), p.name


def test_the_pool_stage_keeps_every_drawing_and_drops_the_duplicate_and_the_broken_file(committed, tmp_path):
    config = build(MegaPoolConfig, {"path": str(committed / "pool.jsonl")}, "pool", {})
    stage = MegaPool(config, SimpleNamespace(run_uri=str(tmp_path / "run"), index_uri=str(tmp_path / "idx")))
    verdicts, state = {}, FirstSeen.local(stage.dedup)
    for spec in stage.plan(None, ()):
        table = run_steps(tag_rows(stage.readers()[spec.kind](spec, None), spec.shard), stage.task_steps())
        verdicts.update(zip(table["id"].to_pylist(), commit_statuses(stage, table, state)))
    dropped = {k: v for k, v in verdicts.items() if v != ("ok", "")}
    assert dropped == {DUPLICATE[0]: ("filtered", "filter:duplicate_image"),
                       BROKEN: ("rejected", "error:image_truncated")}
    assert len(verdicts) - len(dropped) == sum(1 for r in rows_of(committed) if r["id"] not in dropped) == 50
