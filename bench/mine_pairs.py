"""mine_pairs stage: MegaPairs pair mining at scale on synthetic views, flat vs IVF.

    python bench/mine_pairs.py --n 100000         # 100k images x 3 views (minutes on 2 cores)
    python bench/mine_pairs.py --n 5000           # quick check

No model: embedding the views needs CLIP / DINOv2 (on a GPU it dominates) and is not measured here.
What is measured is everything mine_pairs does after the views are embedded, through the stage's own
code: each view written as its embed side stage writes it (parts with id, image reference, caption,
license, origin, embedding), `finish_index` (faiss index + the memory-mapped rows.arrow and id
lookup), then `MinePairsFn` per shard of 256 queries (id lookup, the query's stored vector, faiss
search of search_k + 1 per view, metadata of the hits, pipeline/mining.mine_query, the output units).

Synthetic data, per view: `--dim` (256) unit vectors around n/100 cluster centres (`--spread` 1.5:
cluster mates sit near cosine 0.3, far below the band; IVF lists are uneven and a query's neighbours
span lists), with planted in-band pairs: images 10j and 10j+1 in every view, 10j+2/3, 10j+4/5 and
10j+6/7 in one view each (0, 1, 2), at a cosine drawn in (0.82, 0.94). So 40% of the images have one
planted partner per view that plants theirs, and the views overlap on one pair in five.
Reported per index kind: build seconds (3 views), mine seconds, queries/s, peak RSS of this process
so far, pairs emitted, recall of flat's pairs (share of flat's (query, target) pairs IVF also emits),
and the share of planted pairs found (both directions).
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

VIEWS = ("clip_image", "dino", "clip_text")


def planted(n: int) -> list[set[tuple[int, int]]]:
    """Per view, the planted pairs (a, a + 1)."""
    shared = {(i, i + 1) for i in range(0, n - 1, 10)}
    own = [{(i, i + 1) for i in range(start, n - 1, 10)} for start in (2, 4, 6)]
    return [shared | own[v] for v in range(len(VIEWS))]


def view_vectors(n: int, dim: int, spread: float, pairs: set[tuple[int, int]], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), dim), dtype=np.float32)
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a = np.array(sorted(p[0] for p in pairs))
    cos = rng.uniform(0.82, 0.94, len(a)).astype(np.float32)
    # The partner: cos * x_a + sin * (a unit vector orthogonal to x_a).
    orth = rng.standard_normal((len(a), dim), dtype=np.float32)
    orth -= (orth * x[a]).sum(1, keepdims=True) * x[a]
    orth /= np.linalg.norm(orth, axis=1, keepdims=True)
    x[a + 1] = cos[:, None] * x[a] + np.sqrt(1 - cos**2)[:, None] * orth
    x[a + 1] /= np.linalg.norm(x[a + 1], axis=1, keepdims=True)
    return x


def pool_table(start: int, stop: int) -> pa.Table:
    from pipeline.io.image_store import IMAGE_REF

    ids = [f"img{i:07d}" for i in range(start, stop)]
    refs = [
        {"sha256": f"{i:064x}", "width": 512, "height": 512, "format": "jpeg"} for i in range(start, stop)
    ]
    return pa.table(
        {
            "id": ids,
            "image": pa.array(refs, IMAGE_REF),
            "caption": [f"a photo number {i}" for i in range(start, stop)],
            "license": ["cc-by-4.0"] * len(ids),
            "origin": [f"pool/{i}.jpg" for i in ids],
        }
    )


def write_parts(uri: str, folder: str, x: np.ndarray, rows: int = 512) -> list[str]:
    from pipeline.io.fs import RunFS
    from pipeline.io.indexes import embedding_array

    run_fs = RunFS.from_uri(uri)
    parts = []
    for k, start in enumerate(range(0, len(x), rows)):
        stop = min(start + rows, len(x))
        table = pool_table(start, stop).append_column("embedding", embedding_array(x[start:stop]))
        rel = f"{folder}/part-{k:06d}.parquet"
        run_fs.write_parquet(rel, table)
        parts.append(rel)
    return parts


def mine_all(cfg, handles: dict, n: int, shard: int = 256) -> tuple[set[tuple[str, str]], float]:
    """`MinePairsFn` over every pool image, shard by shard; (emitted (query, target) pairs, seconds)."""
    from pipeline.config import to_dict
    from pipeline.stage import PARENT, SHARD, SRC
    from pipeline.stages.mine_pairs import MinePairsFn

    start = time.perf_counter()
    fn = MinePairsFn(to_dict(cfg), handles)
    pairs = set()
    for s in range(0, n, shard):
        table = pool_table(s, min(s + shard, n))
        table = table.append_column(SHARD, pa.array([f"{s:06d}"] * table.num_rows))
        table = table.append_column(SRC, pa.array(range(table.num_rows), pa.int64()))
        out = fn(table.append_column(PARENT, table["id"]))
        pairs |= {
            (q, t) for q, t in zip(out["query_id"].to_pylist(), out["target_id"].to_pylist()) if t is not None
        }
    return pairs, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000, help="pool images (every one is a query)")
    ap.add_argument(
        "--queries",
        type=int,
        default=0,
        help="mine the first QUERIES images only (default: all); the pool stays --n",
    )
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--search-k", type=int, default=50)
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (0: 4 sqrt(n), capped at n / 40)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--spread", type=float, default=1.5)
    ap.add_argument("--work", default="/tmp/fg-bench-mine-pairs")
    args = ap.parse_args()
    from pipeline.io.index_config import IndexConfig
    from pipeline.io.indexes import IndexHandle, finish_index
    from pipeline.stages.mine_pairs import MinePairsConfig
    from pipeline.stages.mp_views import ViewConfig

    n = args.n
    m = min(args.queries or n, n)
    nlist = args.nlist or max(1, min(int(4 * np.sqrt(n)), n // 40))
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    uri = str(work / "_index")
    t = time.perf_counter()
    plants = planted(n)
    parts = {}
    for v, name in enumerate(VIEWS):
        parts[name] = write_parts(
            uri, f"parts-{name}", view_vectors(n, args.dim, args.spread, plants[v], seed=v)
        )
    print(
        f"# {machine()}\n# {n} images x {len(VIEWS)} views x {args.dim} dims, {m} queries, search_k={args.search_k}, "
        f"IVF nlist={nlist}; data + parts {time.perf_counter() - t:.1f} s"
    )
    truth = {(f"img{a:07d}", f"img{b:07d}") for p in plants for a, b in p}
    truth = {(q, t) for q, t in truth | {(b, a) for a, b in truth} if int(q[3:]) < m}
    runs = [("flat", "flat", 16), *[("ivf", f"ivf nprobe={p}", p) for p in args.nprobe]]
    built, results = {}, []
    for kind, label, nprobe in runs:
        reset_peak_rss()  # each variant's own peak (VmHWM), not the process's so far
        if kind not in built:
            t = time.perf_counter()
            handles = {}
            for name in VIEWS:
                done = finish_index(uri, f"{kind}-{name}", parts[name], kind, nlist)
                handles[name] = IndexHandle(uri, f"{kind}-{name}", done["count"], done["dim"], done["kind"])
            built[kind] = (handles, time.perf_counter() - t)
        handles, build_s = built[kind]
        index = IndexConfig(kind=kind, nlist=nlist, nprobe=nprobe)
        views = tuple(ViewConfig(name=name, kind=name, model="bench", index=index) for name in VIEWS)
        cfg = MinePairsConfig(views=views, search_k=args.search_k)
        pairs, mine_s = mine_all(cfg, handles, m)
        results.append((label, build_s, mine_s, peak_rss_bytes() / 2**30, pairs))
    flat_pairs, flat_s = results[0][4], results[0][2]
    print(
        "| index | build s (3 views) | mine s | queries/s | mine time vs flat | peak RSS GiB | pairs | "
        "recall of flat's pairs | planted pairs found |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, build_s, mine_s, rss, pairs in results:
        recall = len(pairs & flat_pairs) / max(1, len(flat_pairs))
        print(
            f"| {label} | {build_s:.1f} | {mine_s:.1f} | {m / mine_s:,.0f} | {mine_s / flat_s:.2f} | {rss:.2f} | "
            f"{len(pairs):,} | {recall:.4f} | {len(pairs & truth) / len(truth):.4f} |"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
