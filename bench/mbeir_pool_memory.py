"""Peak memory of the M-BEIR exporter's candidate numbering: the on-disk `DiskKeys` vs an in-memory dict.

    python bench/mbeir_pool_memory.py [--candidates 1000000] [--work /tmp/fg-bench-mbeir]

Each variant runs in its own process: `_Pool.did` (pipeline/exporters/mbeir.py) is called for
`--candidates` distinct synthetic candidates (doc id, a 200-character passage, an image path), then
for each of them again (the lookup a repeated negative makes); the pool file is written as in an
export. Prints the peak RSS growth over the variant's start (VmHWM), the pool file's size and the
seconds per variant, and the ratio of the two peaks. The dict variant is what the exporter kept before.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_bytes, reset_peak_rss


def run_variant(variant: str, candidates: int, work: str) -> dict:
    from pipeline.exporters.mbeir import _Pool
    from pipeline.exporters.outdir import OutDir

    shutil.rmtree(work, ignore_errors=True)
    out = OutDir(work, "/bench-run", "mbeir", {})
    os.makedirs(out.rel("cand_pool/local"), exist_ok=True)
    base = reset_peak_rss() / 2**20  # RSS now; the peak (VmHWM) counts from here
    started = time.perf_counter()
    pool = _Pool(out, "cand_pool/local/pool.jsonl", {}, {} if variant == "dict" else None)
    text = "x" * 190
    for _ in range(2):
        for n in range(candidates):
            pool.did(10, f"doc-{n}", f"{n:09d} {text}", f"images/{n % 256:02x}/{n:032x}.jpg")
    pool.close()
    seconds = time.perf_counter() - started
    return {"variant": variant, "peak_growth_mib": round(peak_rss_bytes() / 2**20 - base, 1), "seconds": round(seconds, 1),
            "pool_mib": round(os.path.getsize(out.rel("cand_pool/local/pool.jsonl")) / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=1_000_000)
    parser.add_argument("--work", default="/tmp/fg-bench-mbeir")
    parser.add_argument("--variant", choices=("dict", "disk"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.candidates, f"{args.work}-{args.variant}")))
        return
    results = {}
    for variant in ("dict", "disk"):
        done = subprocess.run([sys.executable, __file__, "--variant", variant, "--candidates", str(args.candidates),
                               "--work", args.work], check=True, capture_output=True, text=True)
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        shutil.rmtree(f"{args.work}-{variant}", ignore_errors=True)
        print(results[variant])
    ratio = results["dict"]["peak_growth_mib"] / max(results["disk"]["peak_growth_mib"], 0.1)
    print(f"{args.candidates} candidates: peak RSS growth dict {results['dict']['peak_growth_mib']} MiB, "
          f"disk {results['disk']['peak_growth_mib']} MiB (dict / disk = {ratio:.1f}x); seconds "
          f"{results['dict']['seconds']} vs {results['disk']['seconds']}")


if __name__ == "__main__":
    main()
