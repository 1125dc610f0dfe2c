"""Ingest + export throughput and peak memory on synthetic passages (they must stream).

    python bench/ingest_export.py --rows 100000 1000000 [--work /tmp/fg-bench]

Runs `fusegen run` with stages [ingest, export] on an embedded Ray, as a user would, and samples
the driver's RSS and the PSS of the whole process tree (driver + raylet + GCS + workers).
Target (issue #3): peak at 1M rows <= 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fusegen, gib, machine, manifest, write_corpus

LIMIT = 2 * 2**30


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--work", default="/tmp/fg-bench-ingest")
    ap.add_argument("--shard-rows", type=int, default=None, help="default: configs/base.yaml's")
    ap.add_argument("--spread-duplicates", action="store_true",
                    help="duplicates of any of the last 100k passages, not of the one before it")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="more config overrides, as `fusegen run --set` takes them (e.g. export.resources.shard_rows=4000)")
    args = ap.parse_args()
    work = Path(args.work)
    print(f"machine: {machine()}")
    print("| rows | corpus MB | ingest s | export s | total wall s | rows/s (wall) | driver peak RSS | tree peak PSS "
          "| ingest shards | dedup rewrites | kept ids (count, sha256) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    ok = True
    shard_rows = ["--set", f"ingest.resources.shard_rows={args.shard_rows}"] if args.shard_rows else []
    shard_rows += [arg for kv in args.set for arg in ("--set", kv)]
    for rows in args.rows:
        corpus = work / f"corpus-{rows}{'-spread' if args.spread_duplicates else ''}.jsonl"
        if not corpus.exists():
            write_corpus(corpus, rows, spread=args.spread_duplicates)
        run_dir = work / f"run-{rows}"
        shutil.rmtree(run_dir, ignore_errors=True)
        wall, mem, _ = fusegen(
            "run", "configs/base.yaml", "--run-dir", str(run_dir),
            "--set", "stages=[ingest, export]", "--set", "export.schema=passthrough", "--set", f"ingest.path={corpus}",
            "--set", "ray.num_cpus=2", *shard_rows,
            memory=True,
        )
        ing, exp = manifest(run_dir, "01_ingest"), manifest(run_dir, "export")
        assert ing["rows"]["in"] == rows, ing["rows"]
        print(f"| {rows:,} | {corpus.stat().st_size / 1e6:.0f} | {ing['seconds']:.1f} | {exp['seconds']:.1f} | "
              f"{wall:.1f} | {rows / wall:,.0f} | {gib(mem.peak_rss)} | {gib(mem.peak_pss)} | {kept_ids(run_dir)} |",
              flush=True)
        ok &= mem.peak_pss <= LIMIT
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if ok else 1


def kept_ids(run_dir: Path) -> str:
    """Ingest's shards, the parts a dedup rewrite replaced (`...d.parquet`), and the kept ids in commit
    order (count and digest): what two runners' decisions are compared by."""
    import hashlib

    import pyarrow.parquet as pq

    digest, count, rewrites = hashlib.sha256(), 0, 0
    markers = sorted((run_dir / "01_ingest" / "_parts").glob("*.json"))
    for marker in markers:
        for rel in json.loads(marker.read_text())["files"]["parts"]:
            rewrites += rel.endswith("d.parquet")
            ids = pq.read_table(run_dir / rel, columns=["id"])["id"].to_pylist()
            digest.update("".join(f"{i}\n" for i in ids).encode())
            count += len(ids)
    return f"{len(markers)} | {rewrites} | {count:,}, {digest.hexdigest()[:12]}"


if __name__ == "__main__":
    raise SystemExit(main())
