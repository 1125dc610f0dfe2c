"""Image rows on the two-node session cluster through `ray job submit`: model actors on the second
node, images stored once and referenced, only receipts reaching the driver."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.e2e.conftest import MODEL_NODE

pytestmark = pytest.mark.e2e

PASSAGES = 14


def noise_jpeg(seed: int, side: int = 256) -> bytes:
    """Noise does not compress: each JPEG is ~100-200 KB, like a real photo."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_run(ray_cluster, tmp_path_factory, tiny_cache):
    root = tmp_path_factory.mktemp("images")
    (root / "img").mkdir()
    images = {}
    with (root / "corpus.jsonl").open("w") as f:
        for i in range(PASSAGES):
            # The last two passages share one picture: it must be stored once.
            name = f"p{min(i, PASSAGES - 2)}.jpg"
            if name not in images:
                images[name] = noise_jpeg(i)
                (root / "img" / name).write_bytes(images[name])
            f.write(json.dumps({"doc_id": f"d{i}", "text": f"Passage number {i} about landmark {i}.",
                                "image": f"img/{name}"}) + "\n")
    run_dir = root / "run"
    ray_cluster.submit("images", [
        "configs/demo.yaml", "--run-dir", str(run_dir), "--set", "stages=[ingest, doc2query, export]", "--set", "export.schema=passthrough",
        "--set", f"ingest.path={root / 'corpus.jsonl'}", "--set", f"cache_dir={tiny_cache}",
        "--set", "doc2query.llm.model=tiny:qwen2", "--set", "doc2query.queries_per_passage=2",
        "--set", "doc2query.llm.max_new_tokens=300", "--set", "doc2query.max_query_chars=40",
        "--set", "doc2query.max_answer_chars=20", "--set", "doc2query.resources.shard_rows=4",
        "--set", "doc2query.resources.concurrency=1", "--set", "doc2query.resources.num_cpus=0.5",
        "--set", f"doc2query.resources.custom={{{MODEL_NODE}: 1}}",
    ])
    state = ray_cluster.wait("images")
    assert state == "SUCCEEDED", ray_cluster.logs("images")[-4000:]
    return run_dir, images


def manifest(run_dir: Path, folder: str) -> dict:
    return json.loads((run_dir / folder / "_manifest.json").read_text())


def test_each_distinct_image_is_stored_once(image_run):
    run_dir, images = image_run
    stored = {p.stem: p.stat().st_size for p in (run_dir / "_images").rglob("*.jpg")}
    expected = {hashlib.sha256(b).hexdigest(): len(b) for b in images.values()}
    assert stored == expected


def test_rows_between_stages_hold_references_not_bytes(image_run):
    run_dir, images = image_run
    image_bytes = sum(len(b) for b in images.values())
    for folder in ("01_ingest", "02_doc2query"):
        part_bytes = sum(p.stat().st_size for p in (run_dir / folder).glob("part-*.parquet"))
        assert part_bytes < image_bytes / 20, folder
    refs = pq.read_table(run_dir / "02_doc2query", columns=["image"])["image"].to_pylist()
    assert refs and all(set(r) == {"sha256", "width", "height", "format"} for r in refs)


def test_driver_received_receipts_only(image_run):
    run_dir, images = image_run
    image_bytes = sum(len(b) for b in images.values())
    received = sum(manifest(run_dir, f)["driver_receipt_bytes"] for f in ("01_ingest", "02_doc2query", "export"))
    assert 0 < received < image_bytes / 100


def test_export_materialises_each_rows_own_image(image_run):
    from datasets import load_dataset

    run_dir, images = image_run
    ds = load_dataset("parquet", data_dir=str(run_dir / "export" / "data"), split="train")
    ds = ds.cast_column("image", ds.features["image"].__class__(decode=False))
    by_doc = {f"d{i}": images[f"p{min(i, PASSAGES - 2)}.jpg"] for i in range(PASSAGES)}
    assert len(ds) > 0
    assert all(row["image"]["bytes"] == by_doc[row["doc_id"]] for row in ds)


def test_model_actors_ran_on_the_model_node(image_run, ray_cluster):
    from ray.util.state import list_actors, list_nodes

    model_nodes = {n.node_id for n in list_nodes(address=ray_cluster.address, detail=True)
                   if MODEL_NODE in (n.resources_total or {})}
    # The cluster is shared by the session's e2e modules: only this job's actors count.
    job_id = ray_cluster.client().get_job_info("images").job_id
    actors = [a for a in list_actors(address=ray_cluster.address, detail=True, limit=10000)
              if a.job_id == job_id and "HFGenerateFn" in (a.class_name or "")]
    assert actors and {a.node_id for a in actors} <= model_nodes
