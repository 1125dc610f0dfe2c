"""Dedup at corpus scale: the driver's memory while `io/dedup.FirstSeen` decides 100M rows (issue 20).

    python bench/dedup_scale.py --rows 100000000 [--shard-rows 20000] [--owners 4]
    python bench/dedup_scale.py --rows 10000000 --rule driver     # the rule it replaced (no Ray)

Simulates what ingest's committer does, without the pipeline: shard after shard, the kept rows' keys
(a content key and an id key, 128 bits each) go to `FirstSeen.decide` on an embedded Ray, whose key
owners are actors (other processes). Keys are computed from the row number (splitmix64), so the
generator itself remembers nothing: ~2 % of rows repeat the text of a random earlier row and ~0.1 %
reuse an earlier row's id. At 1M and every 10M rows it prints the driver's peak RSS (VmHWM, reset at the
start), the keys the owners hold and their bytes, and the rows decided per second; the driver must
stay flat. `--rule driver` runs the rule it replaced instead (two Python sets of 128-bit ints on the
driver), for the comparison: the same keys, so the same rows dropped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import gib, machine, peak_rss_bytes, reset_peak_rss

from pipeline.io.dedup import DedupRule, FirstSeen, row_keys

RULE = DedupRule(("content_hash", "doc_id"), "filter:duplicate_text", "error:duplicate_doc_id")
MASK = np.uint64(2**64 - 1)


def splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & MASK
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & MASK
        return z ^ (z >> np.uint64(31))


def key(rows: np.ndarray, salt: int) -> np.ndarray:
    """A 128-bit key per row number: (hi, lo)."""
    r = rows.astype(np.uint64) * np.uint64(4) + np.uint64(salt)
    return np.stack([splitmix(r), splitmix(r + np.uint64(2))], axis=1)


def shard_keys(start: int, n: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.arange(start, start + n, dtype=np.int64)
    text_of, id_of = rows.copy(), rows.copy()
    if start:
        again = rng.random(n) < 0.02
        text_of[again] = rng.integers(0, start, int(again.sum()))
        reused = rng.random(n) < 0.001
        id_of[reused] = rng.integers(0, start, int(reused.sum()))
    return row_keys(key(text_of, 0), key(id_of, 1))


def old_rule(keys: np.ndarray, seen_content: set, seen_id: set) -> int:
    """ingest.first_seen as it was: Python ints in two sets on the driver. Returns rows dropped."""
    dropped = 0
    for c_hi, c_lo, i_hi, i_lo in keys.tolist():
        c, d = c_hi << 64 | c_lo, i_hi << 64 | i_lo
        if c in seen_content or d in seen_id:
            dropped += 1
        else:
            seen_content.add(c)
            seen_id.add(d)
    return dropped


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--shard-rows", type=int, default=20_000)
    ap.add_argument("--owners", type=int, default=4)
    ap.add_argument("--rule", choices=["owners", "driver"], default="owners")
    args = ap.parse_args()
    # A line at 1M and at every 10M rows: the driver's peak must not grow from one to the next.
    marks = sorted({m for m in (1_000_000, *range(10_000_000, args.rows + 1, 10_000_000)) if m <= args.rows}
                   | {args.rows})
    print(f"machine: {machine()}", flush=True)
    if args.rule == "driver":
        return driver_sets(marks, args.shard_rows)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    seen = FirstSeen.on_ray(RULE, args.owners)
    rng = np.random.default_rng(0)
    base = reset_peak_rss()
    print(f"driver RSS after ray.init and {args.owners} owners: {gib(base)}; shards of {args.shard_rows:,} rows")
    print("| rule | rows decided | dropped | driver peak RSS | keys held (owners) | owners' key bytes | rows/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    done = dropped = 0
    started = time.monotonic()
    for mark in marks:
        while done < mark:
            n = min(args.shard_rows, mark - done)
            dropped += len(seen.decide(shard_keys(done, n, rng)))
            done += n
        held, nbytes = seen.size()
        print(f"| key owners ({args.owners} actors) | {done:,} | {dropped:,} | {gib(peak_rss_bytes())} | {held:,} | "
              f"{gib(nbytes)} | {done / (time.monotonic() - started):,.0f} |", flush=True)
    seen.close()
    ray.shutdown()
    return 0


def driver_sets(marks: list[int], shard_rows: int) -> int:
    rng = np.random.default_rng(0)
    reset_peak_rss()
    content: set = set()
    ids: set = set()
    done = dropped = 0
    started = time.monotonic()
    for mark in marks:
        while done < mark:
            n = min(shard_rows, mark - done)
            dropped += old_rule(shard_keys(done, n, rng), content, ids)
            done += n
        print(f"| driver sets (before) | {done:,} | {dropped:,} | {gib(peak_rss_bytes())} | "
              f"{len(content) + len(ids):,} | (in the driver) | {done / (time.monotonic() - started):,.0f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
