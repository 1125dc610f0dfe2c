"""negatives stage: hard-negative mining at scale on synthetic vectors, flat vs IVF.

    python bench/negatives.py --n 100000          # 100k pool x 100k queries (minutes on 2 cores)
    python bench/negatives.py --n 10000           # quick check

No model: encoding the queries needs GME (on a GPU it dominates) and is not measured here. What is
measured is everything negatives does after encoding, through the stage's own code: the pool written
as the GME pool side stage writes it (embedding parts with id, doc_id, title, text, content_hash,
text_hash, image), `finish_index` (faiss index + the memory-mapped rows.arrow), then
`NegativesFn._mine` per shard of 256 queries (faiss search, metadata of the hit rows, `mine`, payload
of the kept rows).

Synthetic data: `--dim` (256) unit vectors around n/100 overlapping cluster centres (`--spread`):
IVF lists are uneven and a query's neighbours span several lists, as with real embeddings (spread 1.5
gives IVF nprobe=16 a search recall@8 near 0.99 at n=10k; 2.5, nearly isotropic, about 0.63). Every
50th passage is a loose duplicate of the one before (same text_hash); passages come in sources of 4
sharing a title. Query i is a noisy copy of passage i % n, its positive.
Reported per index kind: build and mining seconds, peak RSS of this process so far, recall@K of the
raw search (top K hits, on the first `--recall-sample` queries) and of the mined negatives (all
queries) against exact flat.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, peak_rss_bytes, reset_peak_rss

sys.path.insert(0, str(REPO))


def _contract() -> None:
    """pipeline.models.gme arrives with branch gme-model; until then use the tests' stand-in."""
    try:
        import pipeline.models.gme  # noqa: F401
    except ModuleNotFoundError:
        from tests.support.gme_stub import install

        install()


def synthetic(n: int, m: int, dim: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), dim), dtype=np.float32)
    noise = spread * rng.standard_normal((n, dim), dtype=np.float32)
    pool = centres[rng.integers(0, len(centres), n)] + noise
    # Loose duplicates: nearly the same vector as the passage before.
    dups = np.arange(50, n, 50)
    pool[dups] = pool[dups - 1] + 0.01 * rng.standard_normal((len(dups), dim), dtype=np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    queries = pool[np.arange(m) % n] + 0.08 * rng.standard_normal((m, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return pool, queries


def write_parts(index_uri: str, folder: str, pool: np.ndarray, rows: int = 512) -> list[str]:
    """The pool side stage's output: one part per pool shard."""
    from pipeline.io.fs import RunFS
    from pipeline.io.image_store import IMAGE_REF
    from pipeline.io.indexes import embedding_array

    run_fs = RunFS.from_uri(index_uri)
    parts = []
    for k, start in enumerate(range(0, len(pool), rows)):
        ids = [f"d{i}" for i in range(start, min(start + rows, len(pool)))]
        loose = [f"t{i - 1}" if i % 50 == 0 and i else f"t{i}" for i in range(start, start + len(ids))]
        table = pa.table(
            {
                "id": ids,
                "doc_id": ids,
                "title": [f"Source {i // 4}" for i in range(start, start + len(ids))],
                "text": [f"Passage {i} " + "lorem ipsum dolor " * 12 for i in range(start, start + len(ids))],
                "image": pa.nulls(len(ids), IMAGE_REF),
                "content_hash": [f"c{i}" for i in range(start, start + len(ids))],
                "text_hash": loose,
                "embedding": embedding_array(pool[start : start + len(ids)]),
            }
        )
        rel = f"{folder}/part-{k:06d}.parquet"
        run_fs.write_parquet(rel, table)
        parts.append(rel)
    return parts


def mine_all(
    handle, queries: np.ndarray, n: int, cfg, sample: int, shard: int = 256
) -> tuple[list, np.ndarray, float]:
    """`NegativesFn._mine` over every query, shard by shard; (mined ids per query, top-K hit rows of the
    first `sample` queries, seconds)."""
    from pipeline.stages.negatives import OUTPUT_TYPES, NegativesFn

    fn = NegativesFn.__new__(NegativesFn)
    fn.cfg, fn.pool = cfg, handle.open()
    mined, top = [], []
    start = time.perf_counter()
    for s in range(0, len(queries), shard):
        block = queries[s : s + shard]
        live = list(range(len(block)))
        cols = {name: [[] for _ in live] for name in OUTPUT_TYPES}
        cols["num_negatives"], cols["neg_pos_score"] = [0] * len(block), [None] * len(block)
        fn._mine(block, [(s + i) % n for i in live], live, cols)
        mined += cols["neg_ids"]
    seconds = time.perf_counter() - start
    # The raw search's top K (outside the timing) on a sample: a second exact pass over every query
    # would double the flat run for a number the sample estimates well.
    for s in range(0, min(sample, len(queries)), 4096):
        top.append(fn.pool.search(queries[s : min(s + 4096, sample)], cfg.num_negatives, cfg.index.nprobe)[1])
    return mined, np.concatenate(top), seconds


def recall(got, exact) -> float:
    """Mean share of the exact answer found (rows where the exact answer is empty are skipped)."""
    shares = [len(set(g) & set(e)) / len(e) for g, e in zip(got, exact) if len(e)]
    return float(np.mean(shares)) if shares else 1.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000, help="pool size")
    ap.add_argument("--queries", type=int, default=0, help="queries (default: --n)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=8, help="negatives per query")
    ap.add_argument("--search-k", type=int, default=64)
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (0: 4 sqrt(n), capped at n / 40)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--recall-sample", type=int, default=5000, help="queries the search recall is taken on")
    # Noise around the cluster centres, whose components are N(0, 1).
    ap.add_argument("--spread", type=float, default=1.5)
    ap.add_argument("--work", default="/tmp/fg-bench-negatives")
    args = ap.parse_args()
    _contract()
    from pipeline.io.index_config import IndexConfig
    from pipeline.io.indexes import IndexHandle, finish_index
    from pipeline.stages.negatives import NegativesConfig

    m = args.queries or args.n
    nlist = args.nlist or max(1, min(int(4 * np.sqrt(args.n)), args.n // 40))
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    uri = str(work / "_index")
    t = time.perf_counter()
    pool, queries = synthetic(args.n, m, args.dim, args.spread)
    parts = write_parts(uri, "parts", pool)
    del pool
    print(
        f"# {machine()}\n# pool {args.n} x {args.dim}, {m} queries, K={args.k}, search_k={args.search_k}, "
        f"IVF nlist={nlist}; data + parts {time.perf_counter() - t:.1f} s"
    )
    runs = [("flat", "flat", 16), *[("ivf", f"ivf nprobe={p}", p) for p in args.nprobe]]
    built, results = {}, []
    for kind, label, nprobe in runs:
        reset_peak_rss()  # each variant's own peak (VmHWM), not the process's so far
        if kind not in built:
            t = time.perf_counter()
            done = finish_index(uri, kind, parts, kind, nlist)
            handle = IndexHandle(uri, kind, done["count"], done["dim"], done["kind"])
            built[kind] = (handle, time.perf_counter() - t)
        handle, build_s = built[kind]
        cfg = NegativesConfig(
            num_negatives=args.k, search_k=args.search_k, index=IndexConfig(kind, nlist, nprobe)
        )
        mined, top, mine_s = mine_all(handle, queries, args.n, cfg, args.recall_sample)
        results.append((label, build_s, mine_s, peak_rss_bytes() / 2**30, mined, top))
    exact_mined, exact_top = results[0][4], results[0][5]
    print(
        f"| index | build s | mine s | queries/s | peak RSS GiB | recall@{args.k} search (sample) | "
        f"recall@{args.k} negatives | negatives/query |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, build_s, mine_s, rss, mined, top in results:
        print(
            f"| {label} | {build_s:.1f} | {mine_s:.1f} | {m / mine_s:,.0f} | {rss:.2f} | "
            f"{recall(top.tolist(), exact_top.tolist()):.3f} | {recall(mined, exact_mined):.3f} | "
            f"{np.mean([len(x) for x in mined]):.2f} |"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
