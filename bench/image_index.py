"""Image pool index: flat vs IVF vs HNSW on synthetic CLIP-like vectors (issue 10).

    python bench/image_index.py --n 100000 --dim 768 --queries 1000 --k 10

Vectors: clustered unit vectors (256 centres plus noise), the shape real image embeddings have; the
queries are drawn the same way. For each index kind: build seconds, query seconds for all queries at
top-k, index bytes (what each actor maps), recall@k against the exact flat search. IVF is built as
pipeline/io/indexes.build_faiss builds it (nlist = 4*sqrt(n), nprobe 16); HNSW (M=32, efSearch 64)
is measured for comparison only: the runner does not build it (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

from pipeline.io.indexes import build_faiss


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dim)).astype(np.float32)
    x = centres[rng.integers(0, 256, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def size_of(index) -> int:
    import faiss

    with tempfile.NamedTemporaryFile() as f:
        faiss.write_index(index, f.name)
        return Path(f.name).stat().st_size


def main() -> None:
    import faiss

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    pool, queries = clustered(args.n, args.dim, 0), clustered(args.queries, args.dim, 1)
    rows, exact = [], None
    for kind in ("flat", "ivf", "hnsw"):
        started = time.perf_counter()
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 40
            index.add(pool)
            index.hnsw.efSearch = 64
        else:
            index = build_faiss(pool, kind)
            if hasattr(index, "nprobe"):  # IVF (build_faiss falls back to flat under 40 points per list)
                index.nprobe = 16
        build = time.perf_counter() - started
        started = time.perf_counter()
        _, hits = index.search(queries, args.k)
        query = time.perf_counter() - started
        if exact is None:
            exact = hits
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(hits, exact)])
        rows.append((kind, build, query, size_of(index) / 2**20, recall))
    print(machine())
    print(f"pool {args.n} x {args.dim}, {args.queries} queries, top-{args.k}")
    print(f"{'index':6} {'build s':>9} {'query s':>9} {'q/s':>9} {'MiB':>8} {'recall@k':>9}")
    for kind, build, query, mib, recall in rows:
        print(f"{kind:6} {build:9.2f} {query:9.3f} {args.queries / query:9.0f} {mib:8.1f} {recall:9.3f}")


if __name__ == "__main__":
    main()
