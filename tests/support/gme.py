"""Helpers for the GME stage tests: a deterministic fake embedder, images in a run's store, and a GME
pool index built the way the runner builds it (the real side stage's actor over ingest-like rows, its
parts written, then `finish_index`)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.columns import INTERNAL, SHARD, SRC
from pipeline.io.fs import RunFS
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.io.indexes import IndexHandle, finish_index


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def scored(s: float, axis: int, dim: int = 6) -> list[float]:
    """A unit vector whose cosine with e0 is exactly `s` (the rest on its own `axis`)."""
    v = [0.0] * dim
    v[0], v[axis] = s, float(np.sqrt(1 - s * s))
    return v


class FakeGme:
    """Vectors keyed by the input's text (STYLE R17); remembers every input it was given."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors
        self.dim = len(next(iter(vectors.values())))
        self.seen: list = []

    def encode(self, inputs, batch_size=None) -> np.ndarray:
        self.seen += inputs
        if not inputs:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([unit(self.vectors[i.text]) for i in inputs])


# What the stages hand the embedder for a 64x48 stored image: resized as the GME recipe does (the default
# 256..1024 image tokens of 28x28 pixels lift it to 448x448).
GME_SIZE = (448, 448)


def png(size: tuple[int, int] = (64, 48), color=(200, 30, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def put_image(run_uri: str, data: bytes | None = None, size: tuple[int, int] = (64, 48)) -> dict:
    """Store an image in the run's store and return its reference (junk bytes stay junk)."""
    data = data if data is not None else png(size)
    return ImageStore.from_uri(run_uri).put(data, "png", *size)


def ingest_rows(passages: list[dict]) -> pa.Table:
    """Ingest-like rows (id = doc_id, as ingest writes them) tagged as one shard."""
    n = len(passages)
    return pa.table(
        {
            "id": [p["doc_id"] for p in passages],
            "doc_id": [p["doc_id"] for p in passages],
            "text": [p["text"] for p in passages],
            "title": pa.array([p.get("title") for p in passages], pa.string()),
            "image": pa.array([p.get("image") for p in passages], IMAGE_REF),
            "content_hash": [p.get("content_hash", f"h-{p['doc_id']}") for p in passages],
            SHARD: ["000000"] * n,
            SRC: list(range(n)),
        }
    )


def build_pool(
    index_uri: str, embed_fn, passages: list[dict], kind: str = "flat", split: int = 2
) -> IndexHandle:
    """Run the pool's embed actor over `passages` (cut into `split` parts) and finish the index."""
    run_fs = RunFS.from_uri(index_uri)
    table = embed_fn(ingest_rows(passages))
    table = table.drop_columns([c for c in table.column_names if c in INTERNAL])
    cut = max(1, -(-table.num_rows // split))
    parts = []
    for k, start in enumerate(range(0, table.num_rows, cut)):
        rel = f"gme-x/part-{k:06d}.parquet"
        run_fs.write_parquet(rel, table.slice(start, cut))
        parts.append(rel)
    done = finish_index(index_uri, "gme-x", parts, kind, 0)
    return IndexHandle(index_uri, "gme-x", done["count"], done["dim"], done["kind"])
