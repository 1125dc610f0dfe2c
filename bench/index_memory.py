"""Peak memory of building a declared index (`finish_index`) vs the index's size (issue 19, defect 5).

    python bench/index_memory.py [--rows 1000000] [--dim 128] [--parts 200] [--kind flat|ivf]

Writes `rows` random unit vectors as `parts` embedding parts (id, embedding), as an embed side stage
writes them, then builds the index in a fresh child process per variant and reports each child's peak RSS
growth over its RSS just before the build, divided by the index's size (rows x dim x 4 bytes):
- streamed: `finish_index` as the runner calls it (a flat index filled in place, IVF trained on its
  sample then added part by part, the faiss file written straight into the output stream);
- in-memory: the build before issue 19 — every id in a list, the matrix concatenated, `index.add` of the
  whole matrix, the faiss file written to a temporary file and read back whole to upload.
Target: streamed peak <= 1.5x the index size.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_rss_bytes, reset_peak_rss

TARGET = 1.5


def in_memory_build(uri: str, folder: str, parts: list[str], kind: str, nlist: int) -> None:
    import faiss

    from pipeline.io.fs import RunFS
    from pipeline.io.indexes import build_faiss, id_lookup, read_embeddings

    run_fs = RunFS.from_uri(uri)
    ids, matrix = read_embeddings(run_fs, parts)
    import pyarrow as pa

    run_fs.write_parquet(f"{folder}/ids.parquet", pa.table({"id": pa.array(ids, pa.string())}))
    run_fs.write_stream(f"{folder}/id_lookup.npy", lambda out: np.save(out, id_lookup(ids)))
    index = build_faiss(matrix, kind, nlist)
    with tempfile.TemporaryDirectory() as tmp:
        faiss.write_index(index, f"{tmp}/index.faiss")
        with open(f"{tmp}/index.faiss", "rb") as f:
            run_fs.write_bytes(f"{folder}/index.faiss", f.read())


def child(variant: str, uri: str, parts: list[str], kind: str, nlist: int, out: mp.Queue) -> None:
    import faiss  # noqa: F401  (imports and their pages before the baseline)

    from pipeline.io.indexes import finish_index

    base = reset_peak_rss()
    started = time.perf_counter()
    if variant == "streamed":
        finish_index(uri, f"{variant}-x", parts, kind, nlist)
    else:
        in_memory_build(uri, f"{variant}-x", parts, kind, nlist)
    peak = peak_rss_bytes()
    out.put((variant, peak - base, time.perf_counter() - started))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--parts", type=int, default=200)
    ap.add_argument("--kind", default="flat", choices=["flat", "ivf"])
    ap.add_argument("--nlist", type=int, default=0)
    args = ap.parse_args()
    import pyarrow as pa

    from pipeline.io.fs import RunFS
    from pipeline.io.indexes import embedding_array

    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"{tmp}/_index"
        run_fs = RunFS.from_uri(uri)
        rng = np.random.default_rng(0)
        per, parts = -(-args.rows // args.parts), []
        for k, start in enumerate(range(0, args.rows, per)):
            n = min(per, args.rows - start)
            x = rng.standard_normal((n, args.dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            ids = pa.array([f"passage-{start + i:09d}" for i in range(n)], pa.string())
            rel = f"pool/part-{k:06d}.parquet"
            run_fs.write_parquet(rel, pa.table({"id": ids, "embedding": embedding_array(x)}))
            parts.append(rel)
        size = args.rows * args.dim * 4
        print(f"{args.rows} vectors x {args.dim} in {len(parts)} parts; index {size / 2**20:.0f} MiB ({args.kind})")
        ctx = mp.get_context("spawn")
        for variant in ("streamed", "in-memory"):
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(variant, uri, parts, args.kind, args.nlist, q))
            p.start()
            name, grew, seconds = q.get()
            p.join()
            print(f"{name:>10}: peak +{grew / 2**20:7.0f} MiB = {grew / size:.2f}x the index, {seconds:.1f} s")
            if name == "streamed":
                print(f"{'':>10}  target <= {TARGET}x: {'met' if grew / size <= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
