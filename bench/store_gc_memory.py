"""Driver memory of the image-store GC vs the number of stored images (issue 19, defect 5).

    python bench/store_gc_memory.py [--images 100000] [--garbage 0.1] [--parts 50]

Stores `images` small files in a run's image store (`_images/<aa>/<sha>.png`: the GC reads names, not
pixels), writes `parts` Parquet parts that refer to all but a `garbage` share of them (one reference
column and one list column, as negatives has), then runs each variant in a fresh child process and
reports its peak RSS growth over its RSS just before:
- streamed: `store_garbage` (references spilled to local disk by store folder, one folder in memory);
- in-memory: the GC before issue 19 — every referenced sha in one Python set, the whole store listed.
Both must find the same garbage (checked). Run at two sizes to see which grows with the store.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_rss_bytes, reset_peak_rss


def in_memory_garbage(run_fs) -> tuple[int, int]:
    import pyarrow.compute as pc
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from pipeline.io.image_store import STORE_DIR, is_image_ref, is_image_ref_list

    shas: set[str] = set()
    for info in run_fs.fs.get_file_info(pafs.FileSelector(run_fs.root, recursive=True)):
        rel = info.path[len(run_fs.root) + 1 :]
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet") or rel.startswith(STORE_DIR):
            continue
        schema = pq.read_schema(info.path, filesystem=run_fs.fs)
        columns = [f.name for f in schema if is_image_ref(f.type) or is_image_ref_list(f.type)]
        table = pq.read_table(info.path, columns=columns, filesystem=run_fs.fs)
        for name in columns:
            column = table[name]
            if is_image_ref_list(column.type):
                column = pc.list_flatten(column)
            shas.update(s for s in pc.struct_field(column, "sha256").to_pylist() if s is not None)
    files, size = [], 0
    for info in run_fs.fs.get_file_info(pafs.FileSelector(run_fs.path(STORE_DIR), recursive=True)):
        if info.type == pafs.FileType.File and info.base_name.split(".")[0] not in shas:
            files.append(info.path)
            size += info.size
    return len(files), size


def child(variant: str, root: str, out: mp.Queue) -> None:
    from pipeline.io.fs import RunFS
    from pipeline.io.image_store import store_garbage

    run_fs = RunFS.from_uri(root)
    base = reset_peak_rss()
    if variant == "streamed":
        g = store_garbage(run_fs, keep=0)
        found = (g.count, g.bytes)
    else:
        found = in_memory_garbage(run_fs)
    out.put((variant, peak_rss_bytes() - base, found))


def build(root: str, images: int, garbage: float, parts: int) -> None:
    import pyarrow as pa

    from pipeline.io.fs import RunFS
    from pipeline.io.image_store import IMAGE_REF, ImageStore

    run_fs = RunFS.from_uri(root)
    store = ImageStore(run_fs)
    refs = []
    for i in range(images):
        data = f"image {i}".encode()
        ref = {"sha256": hashlib.sha256(data).hexdigest(), "width": 1, "height": 1, "format": "png"}
        path = Path(run_fs.path(store.rel(ref)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        refs.append(ref)
    live = refs[: int(images * (1 - garbage))]
    per = -(-len(live) // parts)
    for k in range(parts):
        chunk = live[k * per:(k + 1) * per]
        run_fs.write_parquet(f"02_s/part-{k:06d}.parquet", pa.table({
            "image": pa.array(chunk, IMAGE_REF),
            "negs": pa.array([[r, live[0]] for r in chunk], pa.list_(IMAGE_REF)),
        }))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--garbage", type=float, default=0.1)
    ap.add_argument("--parts", type=int, default=50)
    args = ap.parse_args()
    print(machine())
    ctx = mp.get_context("spawn")
    for images in args.images:
        with tempfile.TemporaryDirectory() as root:
            build(root, images, args.garbage, args.parts)
            seen = {}
            for variant in ("streamed", "in-memory"):
                q = ctx.Queue()
                p = ctx.Process(target=child, args=(variant, root, q))
                p.start()
                name, grew, found = q.get()
                p.join()
                seen[name] = found
                print(f"{images:>7} images {name:>10}: peak +{grew / 2**20:6.1f} MiB, garbage {found[0]} files")
            assert seen["streamed"] == seen["in-memory"], seen


if __name__ == "__main__":
    main()
