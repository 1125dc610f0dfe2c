"""Export throughput and bytes written per row, with images: the GME Parquet vs the exporters' formats.

    python bench/export.py --rows 2000 [--negatives 8] [--image-px 256] [--work /tmp/fg-bench-export]

Synthetic rows as the negatives stage hands them to export (a passage image per doc, a query image
per row, `--negatives` mined negatives with their passages' images, noise JPEGs that do not compress),
then, single process, no Ray:
  1. the export stage's worker work: `gme_batch` (triplets + images materialised from the run's store)
     and `write_pieces` (Parquet parts, row groups capped by bytes), one shard at a time;
  2. `fusegen export` of that run to gme (copy), ms-swift, mmeb and mbeir.
Prints rows/s and bytes written per row (Parquet / JSONL / image files) for each.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.exporters import export_run
from pipeline.io.commit import ShardCommitter, write_pieces
from pipeline.io.fs import RunFS
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.io.manifest import aggregate_markers
from pipeline.io.shards import tag_rows
from pipeline.stages.export import Export, ExportConfig, gme_batch

STAGES = ["ingest", "doc2query", "consistency", "entities", "images", "clip_filter", "gme_score", "negatives", "export"]


def jpeg(rng: np.random.Generator, px: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (px, px, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def upstream(store: ImageStore, rows: int, negatives: int, px: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    docs = max(rows // 2, negatives + 1)
    doc_images = [store.put(jpeg(rng, px), "jpeg", px, px) for _ in range(docs)]
    out = []
    for i in range(rows):
        d = i % docs
        neg = [(d + k) % docs for k in range(1, negatives + 1)]
        out.append({
            "id": f"d{d}-q{i // docs}", "doc_id": f"d{d}", "title": f"Passage {d}",
            "text": f"Passage {d} " + "words " * 120, "rewritten_query": f"What is this thing number {i}?",
            "query_image": store.put(jpeg(rng, px), "jpeg", px, px), "image": doc_images[d],
            "instruction": "Retrieve a passage that answers the question about the image.",
            "neg_doc_ids": [f"d{k}" for k in neg], "neg_texts": [f"Passage {k} " + "words " * 120 for k in neg],
            "neg_images": [doc_images[k] for k in neg], "neg_scores": [0.5] * negatives,
        })
    table = pa.Table.from_pylist(out)
    for name, tp in (("query_image", IMAGE_REF), ("image", IMAGE_REF), ("neg_images", pa.list_(IMAGE_REF)),
                     ("neg_scores", pa.list_(pa.float32()))):
        table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(tp))
    return table


def export_stage(run: Path, table: pa.Table, shard_rows: int, task: str) -> float:
    """The export stage's worker work, shard by shard; returns seconds."""
    run_fs = RunFS.from_uri(str(run))
    config = ExportConfig(task=task, validation_ratio=0.1)
    stage = Export(config, SimpleNamespace(run_uri=str(run)))
    starts = range(0, table.num_rows, shard_rows)
    specs = [SimpleNamespace(shard=f"{i:06d}", rows=min(shard_rows, table.num_rows - s)) for i, s in enumerate(starts)]
    committer = ShardCommitter(run_fs, stage, "export", specs, SimpleNamespace(update=lambda n, c: None))
    began = time.perf_counter()
    for spec, start in zip(specs, starts):
        block = gme_batch(tag_rows(table.slice(start, spec.rows), spec.shard), config)
        committer.add(write_pieces(block, str(run), stage, "export", "export/data"))
    committer.finish()
    seconds = time.perf_counter() - began
    counts, _, _ = aggregate_markers(run_fs, "export")
    for i, name in enumerate(STAGES, start=1):
        folder = "export" if name == "export" else f"{i:02d}_{name}"
        rows = counts if name == "export" else {"in": table.num_rows, "out": table.num_rows, "filtered": 0, "rejected": 0}
        run_fs.write_json(f"{folder}/_manifest.json", {"stage": name, "status": "complete", "rows": rows,
                                                        "fingerprint": f"bench-{name}"})
    run_fs.write_bytes("run.yaml", ("stages: [" + ", ".join(STAGES) + "]\npipeline: gme\n").encode())
    return seconds


def size(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(path) for f in names)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--negatives", type=int, default=8)
    ap.add_argument("--image-px", type=int, default=256)
    ap.add_argument("--shard-rows", type=int, default=500)
    ap.add_argument("--task", default="it2it", choices=["it2t", "it2it"])
    ap.add_argument("--work", default="/tmp/fg-bench-export")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    run = work / "run"
    table = upstream(ImageStore(RunFS.from_uri(str(run))), args.rows, args.negatives, args.image_px)
    store_mb = size(run / "_images") / 1e6
    print(f"{args.rows} rows, {args.negatives} negatives, {args.image_px}px JPEGs, task {args.task}; "
          f"image store {store_mb:.1f} MB")
    print("| step | seconds | rows/s | bytes written / row |")
    print("|---|---:|---:|---:|")
    seconds = export_stage(run, table, args.shard_rows, args.task)
    n = args.rows
    print(f"| export stage -> GME Parquet | {seconds:.2f} | {n / seconds:,.0f} | {size(run / 'export' / 'data') / n:,.0f} |")
    for fmt in ("gme", "ms-swift", "mmeb", "mbeir"):
        out = work / f"out-{fmt}"
        began = time.perf_counter()
        marker = export_run(str(run), fmt, str(out))
        seconds = time.perf_counter() - began
        written = sum(marker["splits"].values())
        print(f"| fusegen export --format {fmt} | {seconds:.2f} | {written / seconds:,.0f} | {size(out) / written:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
