"""Image-heavy rows through the runner vs Ray Data's own read -> map -> write (issue #8).

    python bench/image_rows.py --rows 5000 20000 [--work /tmp/fg-bench-images]

Every passage has its own 100-300 KB JPEG (noise, so it does not compress), generated once into
WORK/img/ (2 processes) and packed, bytes inline, into WORK/pq-N/ (the corpus both sides read).
A bench track (ingest -> fanout -> export, fanout a doc2query-shaped pass-through emitting 3 units
per row with `_k`) runs in-process through `pipeline.runner.run_pipeline` on an embedded local Ray
(2 CPUs); then, on the same Ray, `ray.data.read_parquet -> map_batches(same x3 fan-out) ->
write_parquet` over the same Parquet; then (`--same-work`, default on) Ray Data doing fusegen's two
passes by hand, without the runner (store each image once and keep a reference; then fan out and
materialise from the store). Before each timed half the page cache is settled (`--cache warm`: dirty
pages flushed and the corpus read once; `cold`: dropped, needs root). Reported: driver peak RSS and
tree peak PSS, the image store's bytes vs the distinct input images, the stage parts' bytes, the
export's bytes, and rows/s and CPU s of every half.
Targets: driver peak <= 1 GiB (and flat in rows), store/input ~= 1.0, stage parts tiny, ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import _WORDS, TreeMemory, bench_env, gib, machine

from pipeline.columns import SLOT, mark_all_ok
from pipeline.stage import BlockStep, Stage, StageConfig
from pipeline.stages.export import Export
from pipeline.stages.ingest import Ingest
from pipeline.tracks import register_track

DRIVER_LIMIT = 2**30
RATIO_TARGET = 0.8
FANOUT = 3
PER_FILE = 1000
TRACK = "bench-images"


@dataclass(frozen=True)
class FanoutConfig(StageConfig):
    queries_per_passage: int = FANOUT


def fanout_block(table: pa.Table, k: int) -> pa.Table:
    """doc2query's shape without the model: k units per row, ids `<id>-q<k>`, a query column, `_k`."""
    n = table.num_rows
    out = table.take(pa.array([i for i in range(n) for _ in range(k)], pa.int64()))
    slots = [s for _ in range(n) for s in range(k)]
    ids = [f"{rid}-q{s}" for rid, s in zip(out["id"].to_pylist(), slots)]
    out = out.set_column(out.schema.get_field_index("id"), "id", pa.array(ids, pa.string()))
    out = out.append_column("query", pa.array([f"query {s}" for s in slots], pa.string()))
    return mark_all_ok(out.append_column(SLOT, pa.array(slots, pa.int32())))


class Fanout(Stage):
    name: ClassVar[str] = "fanout"
    config_cls: ClassVar[type] = FanoutConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id", "text", "image")

    @property
    def fanout(self) -> int:
        return self.config.queries_per_passage

    def task_steps(self) -> list[BlockStep]:
        return [BlockStep(fanout_block, {"k": self.config.queries_per_passage})]


register_track(TRACK, (("ingest", Ingest), ("fanout", Fanout), ("export", Export)))


def noise_jpeg(i: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(i)
    # 300-500 px noise at quality 95: 100-300 KB, ~200 KB on average.
    side = int(rng.integers(300, 501))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_images(args: tuple[str, int, int]) -> int:
    folder, start, stop = args
    for i in range(start, stop):
        path = Path(folder) / f"{i:06d}.jpg"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(noise_jpeg(i))
            tmp.rename(path)
    return stop - start


def _passage(i: int) -> str:
    rng = random.Random(i)
    return f"Passage {i}: " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(40, 90))) + "."


def prepare(work: Path, rows: int) -> Path:
    """WORK/img/<i>.jpg for i < rows and WORK/pq-<rows>/ (files of PER_FILE passages, images inline)."""
    img = work / "img"
    img.mkdir(parents=True, exist_ok=True)
    chunks = [(str(img), s, min(rows, s + 500)) for s in range(0, rows, 500)]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write_images, chunks))
    out = work / f"pq-{rows}"
    out.mkdir(exist_ok=True)
    for start in range(0, rows, PER_FILE):
        name = f"c-{start // PER_FILE:04d}.parquet"
        shared = work / "pq-files" / f"{name}-{min(rows, start + PER_FILE) - start}"
        if not shared.exists():
            stop = min(rows, start + PER_FILE)
            table = pa.table({
                "doc_id": [f"d{i}" for i in range(start, stop)],
                "title": [f"Passage {i}" for i in range(start, stop)],
                "text": [_passage(i) for i in range(start, stop)],
                "image": pa.array([{"bytes": (img / f"{i:06d}.jpg").read_bytes(), "path": f"{i:06d}.jpg"}
                                   for i in range(start, stop)],
                                  pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            })
            shared.parent.mkdir(exist_ok=True)
            pq.write_table(table, f"{shared}.tmp", row_group_size=100)
            os.rename(f"{shared}.tmp", shared)
        if not (out / name).exists():
            os.link(shared, out / name)
    return out


def input_image_bytes(work: Path, rows: int) -> int:
    return sum((work / "img" / f"{i:06d}.jpg").stat().st_size for i in range(rows))


def du(path: Path, pattern: str = "**/*") -> int:
    return sum(p.stat().st_size for p in path.glob(pattern) if p.is_file())


class TreeCPU:
    """CPU seconds (user + system) the driver and its process tree spent in the block: less sensitive to
    other people's load than wall time. Processes that exit inside the block are not counted."""

    def __enter__(self):
        self.before = self._times()
        return self

    def __exit__(self, *exc) -> None:
        after = self._times()
        self.seconds = sum(t - self.before.get(pid, 0.0) for pid, t in after.items())

    @staticmethod
    def _times() -> dict[int, float]:
        import psutil

        me = psutil.Process()
        out = {}
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return out


def run_fusegen(corpus: Path, run_dir: Path, cache: Path, image_check: str = "structure") -> dict:
    from pipeline.rundir import RunContext
    from pipeline.runner import run_pipeline
    from pipeline.settings import build_stages, load_config

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config_file = run_dir.parent / f"{run_dir.name}.yaml"
    # The ingest and export resources are configs/base.yaml's (and the classes' defaults).
    config_file.write_text(
        f"pipeline: {TRACK}\ncache_dir: {cache}\nray: {{num_cpus: 2}}\n"
        f"ingest: {{path: {corpus}, images: {{check: {image_check}}}, resources: {{shard_rows: 2000, num_cpus: 1}}}}\n"
        "export: {schema: passthrough}\n"
    )
    config = load_config(config_file)
    ctx = RunContext.create(config, str(run_dir))
    with TreeMemory(os.getpid()) as mem, TreeCPU() as cpu:
        start = time.perf_counter()
        results = run_pipeline(ctx, build_stages(config, ctx))
        wall = time.perf_counter() - start
    return {"wall": wall, "mem": mem, "cpu": cpu.seconds, "results": {r.name: r.manifest for r in results}}


def fanout_identity(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    return batch.take(pa.array([i for i in range(n) for _ in range(FANOUT)], pa.int64()))


def run_ray_data(corpus: Path, out: Path) -> dict:
    import ray.data

    shutil.rmtree(out, ignore_errors=True)
    with TreeMemory(os.getpid()) as mem, TreeCPU() as cpu:
        start = time.perf_counter()
        ds = ray.data.read_parquet(str(corpus))
        ds = ds.map_batches(fanout_identity, batch_format="pyarrow", batch_size=None)
        ds.write_parquet(str(out))
        wall = time.perf_counter() - start
    return {"wall": wall, "mem": mem, "cpu": cpu.seconds}


REF = pa.struct([("sha256", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string())])


def store_images_by_hand(batch: pa.Table, store: str) -> pa.Table:
    """Pass 1 of the same-work baseline: each image stored once under its SHA-256 (temp + rename),
    its header read for the size, the column replaced by a reference, as ingest does."""
    import hashlib

    from PIL import Image

    refs = []
    for value in batch["image"].to_pylist():
        data = value["bytes"]
        sha = hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as img:
            (width, height), fmt = img.size, img.format.lower()
        path = Path(store) / sha[:2] / f"{sha}.{fmt}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.rename(path)
        refs.append({"sha256": sha, "width": width, "height": height, "format": fmt})
    return batch.set_column(batch.schema.get_field_index("image"), "image", pa.array(refs, REF))


def load_images_by_hand(batch: pa.Table, store: str) -> pa.Table:
    """Pass 2: the x3 fan-out, each distinct image read once and repeated, as HF image structs."""
    out = fanout_identity(batch)
    refs = out["image"].combine_chunks()
    slot, blobs, names, take = {}, [], [], []
    for sha, fmt in zip(refs.field("sha256").to_pylist(), refs.field("format").to_pylist()):
        if sha not in slot:
            slot[sha] = len(blobs)
            blobs.append((Path(store) / sha[:2] / f"{sha}.{fmt}").read_bytes())
            names.append(f"{sha}.{fmt}")
        take.append(slot[sha])
    images = pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array(names, pa.string())],
                                        names=["bytes", "path"]).take(pa.array(take, pa.int64()))
    return out.set_column(out.schema.get_field_index("image"), "image", images)


def run_ray_data_same_work(corpus: Path, out: Path) -> dict:
    """Ray Data doing fusegen's work by hand, without the runner: pass 1 read_parquet -> store each
    image once, keep a reference -> write_parquet; pass 2 read_parquet -> x3 fan-out, images loaded
    from the store -> write_parquet. What this ratio leaves out is the runner's own cost (shards,
    receipts, markers, ledger, rejects, row validation)."""
    import ray.data

    shutil.rmtree(out, ignore_errors=True)
    store = str(out / "_images")
    with TreeMemory(os.getpid()) as mem, TreeCPU() as cpu:
        start = time.perf_counter()
        ds = ray.data.read_parquet(str(corpus))
        ds = ds.map_batches(store_images_by_hand, fn_kwargs={"store": store}, batch_format="pyarrow", batch_size=None)
        ds.write_parquet(str(out / "refs"))
        ds = ray.data.read_parquet(str(out / "refs"))
        ds = ds.map_batches(load_images_by_hand, fn_kwargs={"store": store}, batch_format="pyarrow", batch_size=None)
        ds.write_parquet(str(out / "data"))
        wall = time.perf_counter() - start
    return {"wall": wall, "mem": mem, "cpu": cpu.seconds}


def _pipeline_file() -> str:
    import pipeline

    return pipeline.__file__


def spilled() -> str:
    """Ray's object spilling so far (cluster-wide, cumulative)."""
    import ray
    from ray._private.internal_api import memory_summary

    summary = memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
    lines = [x.strip() for x in summary.splitlines() if "Spilled" in x or "Restored" in x]
    return "; ".join(lines) or "no spilling"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def report(work: Path, rows: int, check: str, fg: dict, rd: dict, run_dir: Path, base_dir: Path, loads: str,
           same: dict | None = None) -> bool:
    """Print one table row (and its detail lines) for a fusegen run against the Ray Data runs."""
    man = fg["results"]
    assert man["export"]["rows"]["out"] == FANOUT * rows, man["export"]["rows"]
    images, inputs = du(run_dir / "_images"), input_image_bytes(work, rows)
    stored = sum(1 for p in (run_dir / "_images").rglob("*.jpg"))
    assert stored == rows, stored
    ratio = (rows / fg["wall"]) / (rows / rd["wall"])
    print(f"| {rows:,} | {check} | {loads} | {fg['wall']:.1f} | {rd['wall']:.1f} | {rows / fg['wall']:,.0f} | "
          f"{rows / rd['wall']:,.0f} | **{ratio:.2f}** | {rd['cpu'] / fg['cpu']:.2f} | {gib(fg['mem'].peak_rss)} | "
          f"{gib(fg['mem'].peak_pss)} / {gib(rd['mem'].peak_pss)} | "
          f"{images / 2**20:,.0f} MiB / {inputs / 2**20:,.0f} MiB = {images / inputs:.3f} | "
          f"{du(run_dir / '01_ingest', '*.parquet') / 2**20:.2f} MiB | "
          f"{du(run_dir / '02_fanout', '*.parquet') / 2**20:.2f} MiB | "
          f"{du(run_dir / 'export' / 'data') / 2**30:.2f} GiB | {du(base_dir) / 2**30:.2f} GiB |", flush=True)
    print(f"  CPU s (tree, user+sys): fusegen {fg['cpu']:.0f}, Ray Data {rd['cpu']:.0f}; {spilled()}", flush=True)
    if same:
        print(f"  same work by hand in Ray Data (two passes through a store): {same['wall']:.1f} s, "
              f"{same['cpu']:.0f} CPU s; ratio **{same['wall'] / fg['wall']:.2f}**, CPU ratio "
              f"{same['cpu'] / fg['cpu']:.2f}", flush=True)
    stage_s = ", ".join(f"{k} {m['seconds']:.1f} s" for k, m in man.items())
    print(f"  stages: {stage_s}; driver receipts "
          f"{sum(m.get('driver_receipt_bytes', 0) for m in man.values()) / 1024:.0f} KiB", flush=True)
    return fg["mem"].peak_rss <= DRIVER_LIMIT and ratio >= RATIO_TARGET


def settle(corpus: Path, cache: str) -> None:
    """Put the page cache in the same state before each timed half, so that neither half inherits the
    other's reads or is slowed by its writeback: flush dirty pages, then either read the corpus once
    (`warm`) or drop the page cache (`cold`, needs root; the corpus then comes from disk on both sides)."""
    os.sync()
    if cache == "cold":
        try:
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
        except OSError as exc:
            raise SystemExit(f"--cache cold needs root to drop the page cache ({exc}); use --cache warm") from None
    elif cache == "warm":
        for path in sorted(corpus.glob("*.parquet")):
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--work", default="/tmp/fg-bench-images")
    ap.add_argument("--object-store-mb", type=int, default=512, help="configs/base.yaml's ray.object_store_mb")
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument("--warmup", type=int, default=200, help="rows of an untimed run of both first (0: none)")
    ap.add_argument("--keep", action="store_true", help="keep the run dirs (default: removed after measuring)")
    ap.add_argument("--order", choices=["fusegen-first", "ray-first"], default="fusegen-first")
    ap.add_argument("--image-check", nargs="+", choices=["decode", "structure"], default=["structure", "decode"],
                    help="ingest.images.check of the fusegen runs (one run each)")
    ap.add_argument("--same-work", action=argparse.BooleanOptionalAction, default=True,
                    help="also time Ray Data doing fusegen's two passes by hand (store, then materialise)")
    ap.add_argument("--cache", choices=["warm", "cold"], default="warm",
                    help="page cache before each timed half: corpus read once (warm) or dropped (cold, root)")
    args = ap.parse_args()
    work = Path(args.work)
    corpora = {rows: prepare(work, rows) for rows in sorted(args.rows)}
    warm = prepare(work, args.warmup) if args.warmup else None
    if args.prepare_only:
        return 0
    os.environ.update({k: v for k, v in bench_env().items() if k not in os.environ})
    import ray
    import ray.cloudpickle
    import ray.data

    from pipeline.raycluster import IDLE_WORKERS, init_ray

    # The bench stage lives outside the package: Ray workers get it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # The runner's own embedded start (pipeline/raycluster.py) with its worker soft limit, by hand.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             object_store_memory=args.object_store_mb * 2**20, _system_config={"num_workers_soft_limit": 2 + IDLE_WORKERS})
    init_ray(None)  # already up: only sets the runner's DataContext options (no progress bars)
    # The baseline gets Ray Data's faster Parquet reader on 2 cores (DESIGN §7: V2 starts extra actors).
    ray.data.DataContext.get_current().use_datasource_v2 = False
    where = ray.get(ray.remote(num_cpus=0)(_pipeline_file).remote())
    print(f"machine: {machine()}; ray object store {args.object_store_mb} MB; workers import {where}")
    head = ("| rows | ingest image check | load avg (1/5/15) | fusegen s | Ray Data s | fusegen rows/s | Ray Data rows/s | "
            "ratio | CPU ratio | driver peak RSS | tree peak PSS (fusegen / Ray Data) | _images / input images | "
            "ingest parts | fanout parts | export | Ray Data output |")
    print(head)
    print("|" + "---:|" * head.count(" | ") + "---:|")
    print("(ratio: rows/s fusegen / Ray Data; CPU ratio: CPU s Ray Data / fusegen)")
    if warm:
        # Worker processes start once per cluster (seconds each on a loaded 2-core machine): both sides
        # are timed on a cluster that has run them once already.
        run_fusegen(warm, work / "run-warmup", work / "cache")
        run_ray_data(warm, work / "ray-warmup")
        if args.same_work:
            run_ray_data_same_work(warm, work / "ray-same-warmup")
        print(f"warm-up ({args.warmup} rows) done; {spilled()}", flush=True)
    ok = True
    for rows, corpus in corpora.items():
        before = load()
        base_dir = work / f"ray-{rows}"
        fgs = {}
        if args.order == "ray-first":
            settle(corpus, args.cache)
            rd = run_ray_data(corpus, base_dir)
        for check in args.image_check:
            settle(corpus, args.cache)
            fgs[check] = run_fusegen(corpus, work / f"run-{rows}-{check}", work / "cache", check)
        if args.order == "fusegen-first":
            settle(corpus, args.cache)
            rd = run_ray_data(corpus, base_dir)
        same = None
        if args.same_work:
            settle(corpus, args.cache)
            same = run_ray_data_same_work(corpus, work / f"ray-same-{rows}")
            same_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in (work / f"ray-same-{rows}" / "data").glob("*.parquet"))
            assert same_rows == FANOUT * rows, same_rows
            assert sum(1 for _ in (work / f"ray-same-{rows}" / "_images").rglob("*.jpeg")) == rows
        after = load()
        ray_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in base_dir.glob("*.parquet"))
        assert ray_rows == FANOUT * rows, ray_rows
        for check, fg in fgs.items():
            run_dir = work / f"run-{rows}-{check}"
            ok &= report(work, rows, check, fg, rd, run_dir, base_dir, f"{before} → {after}", same)
            if not args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(base_dir, ignore_errors=True)
            shutil.rmtree(work / f"ray-same-{rows}", ignore_errors=True)
    ray.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
