"""Seconds for a no-op re-run of a completed demo run (every stage skipped). Target: <= 10 s.

    python bench/noop_rerun.py [--work /tmp/fg-bench-noop]

The first run uses the tiny random Qwen2 so the set-up is quick; the re-run is the same command,
timed from process start to exit (Python start-up and imports included, as a user sees it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fusegen, machine, manifest

TARGET_S = 10.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/fg-bench-noop")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    run_dir = Path(args.work) / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = ("run", "configs/demo.yaml", "--run-dir", str(run_dir), "--set", "doc2query.llm.model=tiny:qwen2",
           "--set", "doc2query.llm.max_new_tokens=64")
    first, _, _ = fusegen(*cmd)
    reruns = []
    for _ in range(args.repeats):
        seconds, _, _ = fusegen(*cmd)
        reruns.append(seconds)
        for folder in ("01_ingest", "02_doc2query", "export"):
            assert manifest(run_dir, folder)["decision"].startswith("skipped"), folder
    best, worst = min(reruns), max(reruns)
    print(f"machine: {machine()}")
    print(f"first run {first:.1f} s; no-op re-run best {best:.2f} s, worst {worst:.2f} s "
          f"over {args.repeats} (target <= {TARGET_S:.0f} s)")
    return 0 if worst <= TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
