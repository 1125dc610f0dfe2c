"""The passage pool index: every ingested passage embedded once per run, searched with faiss.

Built by the consistency stage (through the runner, so it resumes shard by shard like a stage) under
`RUN_DIR/_index/<kind>-<key>/`: `part-*.parquet` with `id` and `embedding` (fixed-size float32 list),
`_parts/`, `_manifest.json`. The key hashes the ingest fingerprint and the embedder's config, so a
later stage (or a re-run of consistency with another top_k) that asks for the same pool reuses it.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

INDEX_ROOT = "_index"


def pool_dir(kind: str, upstream_fingerprint: str, embedder: dict) -> str:
    blob = json.dumps({"upstream": upstream_fingerprint, "embedder": embedder}, sort_keys=True)
    return f"{INDEX_ROOT}/{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def embedding_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)


def load_pool(run_fs, folder: str) -> tuple[list[str], np.ndarray]:
    """(ids, float32 matrix n x dim) of a finished pool, in part order."""
    ids, blocks = [], []
    for name in run_fs.listdir(folder, ".parquet"):
        table = run_fs.read_parquet(f"{folder}/{name}", columns=["id", "embedding"])
        ids += table["id"].to_pylist()
        column = table["embedding"].combine_chunks()
        blocks.append(column.values.to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size))
    if not blocks:
        return [], np.zeros((0, 0), np.float32)
    return ids, np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)


def build_faiss(matrix: np.ndarray, kind: str = "flat", nlist: int = 0, nprobe: int = 16):
    """Inner-product index over L2-normalised rows (= cosine). `ivf` for big pools, exact `flat` else.

    IVF falls back to flat below 40 points per list (faiss's own training minimum); nlist 0 = 4*sqrt(n).
    """
    import faiss

    n, dim = matrix.shape
    if kind == "ivf":
        lists = nlist or max(1, int(4 * np.sqrt(n)))
        if n >= 40 * lists:
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = 1234  # deterministic k-means: reruns give the same lists, hence the same ranks
            index.train(matrix)
            index.add(matrix)
            index.nprobe = min(nprobe, lists)
            return index
    index = faiss.IndexFlatIP(dim)
    index.add(matrix)
    return index
