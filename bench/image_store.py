"""The image store's layout: one file per image (the current ImageStore) vs packed Parquet shards (issue #8).

    python bench/image_store.py [--images 20000] [--work /tmp/fg-bench-images]

Reuses the noise JPEGs bench/image_rows.py writes (WORK/img/, 100-300 KB each; generated here when
missing). For each layout, in one process: store every image (timing only the store calls, the source
files are read outside the clock, the SHA-256 inside it as the store computes it), read 1,000 random
references back one by one (as a worker resolving a reference does), then store the same images again
(the dedup path: nothing new may be written). Layouts:
- files: `pipeline.io.image_store.ImageStore` as it is (`_images/aa/<sha256>.jpg`, temp file + rename);
- packed/rgN: Parquet shards of 256 images (sha256, bytes, width, height, format; no compression, the
  bytes are JPEG) with row groups of N images, each shard written temp + rename; a reference resolves
  through an index sha256 -> (shard, row) built by reading the shards' sha256 columns (timed apart).
Reads run on a warm page cache (the store was just written); this machine cannot drop caches.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_rows import prepare

from pipeline.io.fs import RunFS
from pipeline.io.image_store import ImageStore

SHARD_IMAGES = 256
READS = 1000
SCHEMA = pa.schema([("sha256", pa.string()), ("bytes", pa.binary()), ("width", pa.int32()),
                    ("height", pa.int32()), ("format", pa.string())])


class PackedStore:
    """Images packed into Parquet shards: put() buffers, a full buffer becomes one shard file."""

    def __init__(self, root: str, row_group: int) -> None:
        self.fs, self.row_group = RunFS.from_uri(root), row_group
        self.index: dict[str, tuple[str, int]] = {}
        self.buffer: list[dict] = []
        self.shards = 0
        self._files: dict[str, pq.ParquetFile] = {}

    def load_index(self) -> None:
        """sha256 -> (shard, row) from every shard's sha256 column (what a reader or a re-run needs)."""
        self.index = {}
        for name in self.fs.listdir("_images", ".parquet"):
            shas = pq.read_table(self.fs.path("_images", name), columns=["sha256"])["sha256"].to_pylist()
            self.index.update({sha: (name, row) for row, sha in enumerate(shas)})

    def put(self, data: bytes, fmt: str, width: int, height: int) -> dict:
        sha = hashlib.sha256(data).hexdigest()
        if sha not in self.index:
            self.index[sha] = ("", len(self.buffer))
            self.buffer.append({"sha256": sha, "bytes": data, "width": width, "height": height, "format": fmt})
            if len(self.buffer) == SHARD_IMAGES:
                self.flush()
        return {"sha256": sha, "width": width, "height": height, "format": fmt}

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"shard-{self.shards:06d}.parquet"
        table = pa.Table.from_pylist(self.buffer, schema=SCHEMA)
        self.fs._atomic(f"_images/{name}", lambda tmp: pq.write_table(
            table, tmp, filesystem=self.fs.fs, compression="none", row_group_size=self.row_group))
        for row, r in enumerate(self.buffer):
            self.index[r["sha256"]] = (name, row)
        self.buffer, self.shards = [], self.shards + 1

    def get(self, ref: dict) -> bytes:
        name, row = self.index[ref["sha256"]]
        # A worker resolving one reference: open the shard (footer), read the row group holding the row.
        pf = pq.ParquetFile(self.fs.path("_images", name))
        group, offset = divmod(row, self.row_group)
        return pf.read_row_group(group, columns=["bytes"])["bytes"][offset].as_py()


def sources(img: Path, count: int, batch: int = 256):
    """(bytes, width, height) of the corpus images in batches, read outside the timed store calls."""
    from PIL import Image

    for start in range(0, count, batch):
        out = []
        for i in range(start, min(count, start + batch)):
            data = (img / f"{i:06d}.jpg").read_bytes()
            with Image.open(img / f"{i:06d}.jpg") as im:
                out.append((data, *im.size))
        yield out


def store_all(store, img: Path, count: int) -> tuple[float, list[dict]]:
    refs, seconds = [], 0.0
    for batch in sources(img, count):
        start = time.perf_counter()
        refs += [store.put(data, "jpeg", w, h) for data, w, h in batch]
        seconds += time.perf_counter() - start
    if isinstance(store, PackedStore):
        start = time.perf_counter()
        store.flush()
        seconds += time.perf_counter() - start
    return seconds, refs


def files_under(path: Path) -> tuple[int, int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    dirs = sum(1 for p in path.rglob("*") if p.is_dir())
    return len(files), dirs, sum(p.stat().st_blocks * 512 for p in files)


def bench(layout: str, root: Path, img: Path, count: int, sample: list[int]) -> dict:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    store = ImageStore(RunFS.from_uri(str(root))) if layout == "files" else PackedStore(str(root), int(layout[9:]))
    load = os.getloadavg()[0]
    write_s, refs = store_all(store, img, count)
    nbytes = sum((img / f"{i:06d}.jpg").stat().st_size for i in range(count))
    files, dirs, disk = files_under(root)
    index_s = 0.0
    if isinstance(store, PackedStore):
        store = PackedStore(str(root), store.row_group)
        start = time.perf_counter()
        store.load_index()
        index_s = time.perf_counter() - start
    lat = []
    for i in sample:
        start = time.perf_counter()
        data = store.get(refs[i])
        lat.append(time.perf_counter() - start)
        assert len(data) == (img / f"{i:06d}.jpg").stat().st_size
    before = files_under(root)[0]
    restore_s, _ = store_all(store, img, count)
    assert files_under(root)[0] == before, "re-store wrote new files"
    lat_ms = sorted(x * 1000 for x in lat)
    return {
        "layout": layout, "write_s": write_s, "mb_s": nbytes / 2**20 / write_s, "img_s": count / write_s,
        "files": files, "dirs": dirs, "disk": disk, "input": nbytes, "index_s": index_s,
        "p50": statistics.median(lat_ms), "p99": lat_ms[int(len(lat_ms) * 0.99) - 1], "mean": statistics.fmean(lat_ms),
        "restore_s": restore_s, "load": f"{load:.1f}/{os.getloadavg()[0]:.1f}",
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--work", default="/tmp/fg-bench-images")
    ap.add_argument("--reads", type=int, default=READS, help="random references read back per layout")
    ap.add_argument("--layouts", nargs="+", default=["files", "packed/rg256", "packed/rg16", "packed/rg1"])
    args = ap.parse_args()
    work = Path(args.work)
    prepare(work, args.images)
    img = work / "img"
    sample = random.Random(0).sample(range(args.images), args.reads)
    print(f"| layout ({args.reads:,} reads) | load (start/end) | write s | MB/s | images/s | files (dirs) | on disk / input | "
          "index load s | read p50 ms | read p99 ms | read mean ms | re-store s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for layout in args.layouts:
        r = bench(layout, work / f"store-{layout.replace('/', '-')}", img, args.images, sample)
        print(f"| {layout} | {r['load']} | {r['write_s']:.1f} | {r['mb_s']:.0f} | {r['img_s']:,.0f} | "
              f"{r['files']:,} ({r['dirs']}) | {r['disk'] / r['input']:.3f} | {r['index_s']:.2f} | "
              f"{r['p50']:.2f} | {r['p99']:.2f} | {r['mean']:.2f} | {r['restore_s']:.1f} |", flush=True)
        shutil.rmtree(work / f"store-{layout.replace('/', '-')}", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
