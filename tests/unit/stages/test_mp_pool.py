"""pipeline/stages/mp_pool.py: the MegaPairs pool stage read by hand, as the runner would drive it (no Ray).

Each shard the stage plans is read with its reader, tagged (`tag_rows`), run through `task_steps`, and
committed through `dedup_keys` and io/dedup.py in shard order (`commit_statuses`, the driver's part).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import build
from pipeline.errors import PipelineConfigError, StageInputError
from pipeline.io.dedup import FirstSeen, from_bytes, text_keys
from pipeline.io.fs import RunFS
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.io.shards import tag_rows
from pipeline.stage import INTERNAL, OK, STATUS, run_steps
from pipeline.stages.mp_pool import MegaPool, MegaPoolConfig
from tests.support.ingest import commit_statuses

COLOURS = [(200, 30, 40), (30, 160, 60), (40, 60, 200), (230, 200, 30), (120, 40, 160), (20, 20, 20)]


def png(colour: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def stage_for(tmp_path: Path, **values) -> MegaPool:
    """The stage with a `pool:` section of these values, its run dir under tmp_path/run."""
    ctx = SimpleNamespace(run_uri=str(tmp_path / "run"), index_uri=str(tmp_path / "run" / "_index"))
    return MegaPool(build(MegaPoolConfig, values, "pool", {}), ctx)


def shards(stage: MegaPool) -> list[pa.Table]:
    """Every planned shard read, tagged and run through the stage's steps: the worker's part."""
    out = []
    for spec in stage.plan(None, ()):
        raw = tag_rows(stage.readers()[spec.kind](spec, None), spec.shard)
        out.append(run_steps(raw, stage.task_steps()))
    return out


def run(stage: MegaPool) -> list[tuple[str, str, str]]:
    """(id, status, reason) of every row once the shards are committed in order."""
    state = FirstSeen.local(stage.dedup)
    rows = []
    for table in shards(stage):
        rows += [(i, s, r) for i, (s, r) in zip(table["id"].to_pylist(), commit_statuses(stage, table, state))]
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- reading ------------------------------------------------------------------------------------------


def test_a_folder_pool_gives_relative_ids_sidecar_captions_and_the_default_license(tmp_path):
    pool = tmp_path / "pool"
    (pool / "sub").mkdir(parents=True)
    (pool / "house.png").write_bytes(png(COLOURS[0]))
    (pool / "house.txt").write_text("  a small red house\n")
    (pool / "sub" / "tree.png").write_bytes(png(COLOURS[1]))
    (pool / "sub" / "tree.txt").write_text("one pine tree")
    (pool / "nocap.png").write_bytes(png(COLOURS[2]))
    stage = stage_for(tmp_path, path=str(pool), default_license="CC0-1.0")
    (table,) = shards(stage)
    rows = {r["id"]: r for r in table.select(list(MegaPool.output_columns)).to_pylist()}
    assert {k: (r["caption"], r["license"], r["origin"]) for k, r in rows.items()} == {
        "house.png": ("a small red house", "CC0-1.0", "house.png"),
        "nocap.png": (None, "CC0-1.0", "nocap.png"),
        "sub/tree.png": ("one pine tree", "CC0-1.0", "sub/tree.png"),
    }
    assert table[STATUS].to_pylist() == [OK] * 3


def test_pool_images_go_into_the_run_store_not_the_index_store(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "a.png").write_bytes(png(COLOURS[0], (40, 30)))
    (table,) = shards(stage_for(tmp_path, path=str(pool)))
    (ref,) = table["image"].to_pylist()
    assert (ref["width"], ref["height"], ref["format"]) == (40, 30, "png")
    assert Image.open(io.BytesIO(ImageStore.from_uri(str(tmp_path / "run")).get(ref))).size == (40, 30)
    assert not ImageStore.from_uri(str(tmp_path / "run" / "_index")).exists(ref)


def test_a_jsonl_pool_reads_a_path_and_an_hf_struct_with_a_path(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png(COLOURS[0]))
    (tmp_path / "img" / "b.png").write_bytes(png(COLOURS[1]))
    path = write_jsonl(tmp_path / "pool.jsonl", [
        {"id": "a", "image": "img/a.png", "caption": "a red square", "license": "CC0-1.0"},
        {"id": 7, "image": {"bytes": None, "path": "img/b.png"}, "caption": "a green square"},
    ])
    (table,) = shards(stage_for(tmp_path, path=str(path), default_license="CC-BY-4.0"))
    assert table.select(["id", "caption", "license", "origin"]).to_pylist() == [
        {"id": "a", "caption": "a red square", "license": "CC0-1.0", "origin": "img/a.png"},
        {"id": "7", "caption": "a green square", "license": "CC-BY-4.0", "origin": "img/b.png"},
    ]
    assert table[STATUS].to_pylist() == [OK, OK]


def test_a_parquet_pool_reads_raw_bytes_and_hf_structs_with_bytes(tmp_path):
    images = pa.array([{"bytes": png(COLOURS[0]), "path": "red.png"}, {"bytes": png(COLOURS[1]), "path": None}],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"id": ["s0", "s1"], "image": images, "caption": ["red", None]}), tmp_path / "hf.parquet")
    pq.write_table(pa.table({"pid": ["r0"], "img": [png(COLOURS[2])], "text": ["blue"]}), tmp_path / "raw.parquet")
    hf = shards(stage_for(tmp_path, path=str(tmp_path / "hf.parquet")))[0]
    assert hf.select(["id", "caption", "origin"]).to_pylist() == [
        {"id": "s0", "caption": "red", "origin": "red.png"}, {"id": "s1", "caption": None, "origin": "bytes"}]
    columns = {"id": "pid", "image": "img", "caption": "text"}
    raw = shards(stage_for(tmp_path, path=str(tmp_path / "raw.parquet"), columns=columns))[0]
    assert raw.select(["id", "caption", "origin"]).to_pylist() == [{"id": "r0", "caption": "blue", "origin": "bytes"}]
    assert hf[STATUS].to_pylist() + raw[STATUS].to_pylist() == [OK] * 3


def test_every_broken_image_or_record_is_a_reject_with_its_reason(tmp_path, noise_png):
    (tmp_path / "truncated.png").write_bytes(noise_png[: len(noise_png) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    (tmp_path / "tiny.png").write_bytes(png(COLOURS[0], (2, 2)))
    (tmp_path / "good.png").write_bytes(png(COLOURS[1]))
    path = write_jsonl(tmp_path / "pool.jsonl", [
        {"id": "truncated", "image": "truncated.png"}, {"id": "empty", "image": "empty.png"},
        {"id": "text", "image": "text.png"}, {"id": "tiny", "image": "tiny.png"},
        {"id": "missing", "image": "nowhere.png"}, {"id": "noimage", "caption": "no image"},
        "{not json", {"id": True, "image": "good.png"}, {"id": "good", "image": "good.png"},
    ])
    assert run(stage_for(tmp_path, path=str(path))) == [
        ("truncated", "rejected", "error:image_truncated"),
        ("empty", "rejected", "error:image_empty"),
        ("text", "rejected", "error:image_not_an_image"),
        ("tiny", "rejected", "error:image_too_small"),
        ("missing", "rejected", "error:image_missing"),
        ("noimage", "rejected", "error:no_image"),
        ("pool.jsonl:7", "rejected", "error:invalid_json"),
        ("pool.jsonl:8", "rejected", "error:wrong_type:id"),
        ("good", "ok", ""),
    ]


# --- dedup on the driver ------------------------------------------------------------------------------


DEDUP = [
    {"id": "a", "image": "red.png"},
    {"id": "b", "image": "green.png"},
    {"id": "c", "image": "red_copy.png"},  # the same bytes as a, another id
    {"id": "a", "image": "blue.png"},  # another image, a's id
    {"id": "d", "image": "broken.png"},
    {"id": "e", "image": "green.png"},  # the same file as b
    {"id": "f", "image": "blue.png"},  # blue is new: the rejected row above kept nothing
]


@pytest.fixture
def dedup_pool(tmp_path) -> Path:
    (tmp_path / "red.png").write_bytes(png(COLOURS[0]))
    (tmp_path / "red_copy.png").write_bytes(png(COLOURS[0]))
    (tmp_path / "green.png").write_bytes(png(COLOURS[1]))
    (tmp_path / "blue.png").write_bytes(png(COLOURS[2]))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return write_jsonl(tmp_path / "pool.jsonl", DEDUP)


EXPECTED_DEDUP = [
    ("a", "ok", ""),
    ("b", "ok", ""),
    ("c", "filtered", "filter:duplicate_image"),
    ("a", "rejected", "error:duplicate_id"),
    ("d", "rejected", "error:image_not_an_image"),
    ("e", "filtered", "filter:duplicate_image"),
    ("f", "ok", ""),
]


@pytest.mark.parametrize("shard_rows", [100, 2, 1])
def test_the_first_image_and_id_in_shard_order_win_across_shards(tmp_path, dedup_pool, shard_rows):
    stage = stage_for(tmp_path, path=str(dedup_pool), resources={"shard_rows": shard_rows})
    assert len(stage.plan(None, ())) == -(-len(DEDUP) // shard_rows)
    assert run(stage) == EXPECTED_DEDUP


def test_verdicts_depend_on_commit_order_so_the_stage_commits_in_shard_order(tmp_path, dedup_pool):
    stage = stage_for(tmp_path, path=str(dedup_pool), resources={"shard_rows": 3})
    first, second, _ = shards(stage)
    state = FirstSeen.local(stage.dedup)
    # Shard 1 committed first would keep the later `a` (blue) and reject the first one (red).
    assert commit_statuses(stage, second, state)[0] == ("ok", "")
    assert commit_statuses(stage, first, state)[0] == ("rejected", "error:duplicate_id")
    assert MegaPool.ordered_commit is True


def test_dedup_rebuilt_from_committed_parts_equals_the_state_after_committing(tmp_path, dedup_pool):
    stage = stage_for(tmp_path, path=str(dedup_pool), resources={"shard_rows": 3})
    run_fs = RunFS.from_uri(str(tmp_path / "run"))
    live = FirstSeen.local(stage.dedup)
    parts = []
    tables = shards(stage)
    for table in tables[:2]:
        verdicts = commit_statuses(stage, table, live)
        kept = table.take(pa.array([i for i, (status, _) in enumerate(verdicts) if status == OK], pa.int64()))
        # What the runner commits: the kept rows (after the dedup's verdicts) without internal columns.
        rel = f"01_pool/part-{table['_shard'][0]}.parquet"
        run_fs.write_parquet(rel, kept.drop_columns([c for c in kept.column_names if c in INTERNAL]))
        parts.append(rel)
    resumed = stage_for(tmp_path, path=str(dedup_pool), resources={"shard_rows": 3})
    state = FirstSeen.local(resumed.dedup)
    assert state.load(run_fs.root, parts, resumed.dedup_keys) == 2
    assert state.size() == live.size() and state.size()[0] == 4
    assert commit_statuses(resumed, tables[2], state) == [("ok", "")]


def test_dedup_keys_send_only_hashes_and_ids_to_the_driver(tmp_path, dedup_pool):
    stage = stage_for(tmp_path, path=str(dedup_pool))
    (table,) = shards(stage)
    kept = table.filter(pa.compute.equal(table[STATUS], OK))
    keys = stage.dedup_keys(kept)
    assert keys.shape == (6, 4) and keys.dtype == np.uint64
    # The image key is the SHA-256's first 128 bits; the id key, the id's BLAKE2b: nothing else.
    shas = pa.compute.struct_field(kept["image"], "sha256").to_pylist()
    assert [int(hi) << 64 | int(lo) for hi, lo in keys[:, :2]] == [int(s[:32], 16) for s in shas]
    assert (keys[0, :2] == keys[2, :2]).all() and (keys[1, :2] == keys[4, :2]).all()
    assert (keys[0, 2:] == keys[3, 2:]).all() and len({tuple(k) for k in keys[:, 2:].tolist()}) == 5


# --- empty pools, identity, config --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["empty-folder", "folder-without-images", "empty-jsonl"])
def test_an_empty_pool_plans_no_shard_and_says_so(tmp_path, caplog, kind):
    pool = tmp_path / "pool"
    pool.mkdir()
    path = pool
    if kind == "folder-without-images":
        (pool / "notes.txt").write_text("no images here")
    elif kind == "empty-jsonl":
        path = write_jsonl(pool / "pool.jsonl", [])
    stage = stage_for(tmp_path, path=str(path))
    with caplog.at_level(logging.WARNING):
        assert stage.plan(None, ()) == []
    assert stage.input_identity()["kind"] == ("table" if kind == "empty-jsonl" else "images")
    assert any(r.getMessage().startswith("pool: the pool") and "nothing to read" in r.getMessage()
               for r in caplog.records)


def test_a_missing_pool_path_names_the_pool_section(tmp_path):
    with pytest.raises(StageInputError, match=r"pool: `pool.path` .*nowhere.* does not exist"):
        stage_for(tmp_path, path=str(tmp_path / "nowhere")).input_identity()


def test_an_edited_caption_or_image_changes_the_input_identity(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "a.png").write_bytes(png(COLOURS[0]))
    (pool / "a.txt").write_text("a red square")
    stage = stage_for(tmp_path, path=str(pool))
    before = stage.input_identity()
    (pool / "a.txt").write_text("a crimson square")
    assert stage.input_identity() != before
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "b.png").write_bytes(png(COLOURS[1]))
    table = stage_for(tmp_path, path=str(write_jsonl(tmp_path / "t.jsonl", [{"id": "b", "image": "img/b.png"}])))
    before = table.input_identity()
    (tmp_path / "img" / "b.png").write_bytes(png(COLOURS[1], (30, 30)))
    assert table.input_identity() != before


def test_the_path_string_is_not_part_of_the_fingerprint_but_the_pool_files_are(tmp_path):
    semantic = MegaPoolConfig(path="elsewhere/pool.jsonl").semantic_dict()
    assert "path" not in semantic and semantic == MegaPoolConfig().semantic_dict()


@pytest.mark.parametrize(("values", "field"), [
    ({"path": " "}, "path"),
    ({"shard_mb": 0}, "shard_mb"),
    ({"identity": "md5"}, "identity"),
    ({"default_license": ""}, "default_license"),
    ({"columns": {"id": "x", "caption": "x"}}, "columns"),
    ({"columns": {"image": ""}}, "columns"),
])
def test_bad_settings_are_config_errors_naming_the_pool_key(values, field):
    with pytest.raises(PipelineConfigError, match=rf"pool: `{field}`|`pool\.{field}`"):
        build(MegaPoolConfig, values, "pool", {})


def test_the_config_round_trips_through_its_dict():
    from pipeline.config import to_dict

    cfg = build(MegaPoolConfig, {"path": "p.jsonl", "default_license": "CC0-1.0", "resources": {"shard_rows": 8}},
                "pool", {})
    assert MegaPoolConfig.from_dict(to_dict(cfg)) == cfg and cfg.pool_config().shard_rows == 8


def test_one_shard_task_reads_stores_and_writes_the_pool_with_receipt_keys(tmp_path, dedup_pool):
    """The runner's worker path (read, steps, write) on one shard, and a stage that pickles to the task."""
    import pickle

    from pipeline.runner import run_shard_task

    stage = stage_for(tmp_path, path=str(dedup_pool))
    (spec,) = stage.plan(None, ())
    run = tmp_path / "run"
    read = {"source_uri": str(run), "readers": stage.readers()}
    write = {"run_uri": str(run), "stage": stage, "stage_dir": "01_pool", "parts_dir": "01_pool"}
    steps = pickle.loads(pickle.dumps(stage.task_steps()))
    (receipt,) = run_shard_task({k: [v] for k, v in spec.to_item().items()}, read, steps, write).to_pylist()
    assert (receipt["out"], receipt["filtered"], receipt["rejected"]) == (6, 0, 1)
    assert (from_bytes(receipt["keys"])[:, 2:] == text_keys(["a", "b", "c", "a", "e", "f"])).all()
    (part,) = receipt["parts"]
    written = pq.read_table(run / part)
    assert written.schema.names == list(MegaPool.output_columns)
    assert written.schema.field("image").type.equals(IMAGE_REF)
    store = ImageStore.from_uri(str(run))
    assert all(store.exists(ref) for ref in written["image"].to_pylist())
