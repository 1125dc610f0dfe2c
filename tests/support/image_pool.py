"""Build an image pool index in-process, the way the runner leaves it (parts, markers, faiss files),
so actor tests can open it without Ray."""

from __future__ import annotations

import pyarrow as pa

from pipeline.columns import PARENT, SHARD, SRC, STATUS
from pipeline.config import to_dict
from pipeline.io.fs import RunFS
from pipeline.io.image_pool import POOL_READERS, load_pool_batch, plan_pool
from pipeline.io.indexes import IndexHandle, finish_index
from pipeline.stages.images import ImagesConfig, PoolVectorsFn


def build_pool_index(index_uri: str, cfg: ImagesConfig, model: str, folder: str = "image-test",
                     resolver=None) -> tuple[IndexHandle, list[pa.Table]]:
    """(handle, the pool batches with their statuses: kept and rejected rows)."""
    run_fs = RunFS.from_uri(index_uri)
    vectors = PoolVectorsFn(cfg.retrieval.retriever, model, to_dict(cfg), index_uri)
    parts, batches = [], []
    for spec in plan_pool(cfg.pool):
        raw = POOL_READERS[spec.kind](spec, None)
        raw = raw.append_column(SHARD, pa.array([spec.shard] * raw.num_rows))
        raw = raw.append_column(SRC, pa.array(range(raw.num_rows), pa.int64()))
        raw = raw.append_column(PARENT, pa.array([None] * raw.num_rows, pa.string()))
        batch = vectors(load_pool_batch(raw, to_dict(cfg.pool), to_dict(cfg.fetch), index_uri, resolver))
        batches.append(batch)
        kept = batch.filter(pa.compute.equal(batch[STATUS], "ok"))
        rel = f"{folder}/part-{spec.shard}.parquet"
        run_fs.write_parquet(rel, kept.select(["id", "embedding", "image", "caption", "license", "origin"]))
        run_fs.write_json(f"{folder}/_parts/{spec.shard}.json", {"files": {"parts": [rel], "rejects": []}})
        parts.append(rel)
    done = finish_index(index_uri, folder, parts, "flat", 0)
    return IndexHandle(index_uri, folder, done["count"], done["dim"], done["kind"]), batches
