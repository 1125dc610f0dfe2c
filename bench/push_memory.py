"""Peak memory of `fusegen push` vs the export size: the test Hub runs in another process, the push here.

Usage: python bench/push_memory.py [--shards 8] [--shard-mb 24] [--commit-mb 32]
Writes an export of `shards` Parquet files of incompressible bytes, pushes it through the real
huggingface_hub client (regular upload mode: each file travels base64 inside the commit body, the
client's worst case), and prints the process's peak RSS growth next to the largest file and the total.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from common import peak_rss_bytes, reset_peak_rss

TOKEN = "hf_bench_token"


def serve(queue: mp.Queue, stop: mp.Event) -> None:
    from tests.support.hub_server import HubServer

    with HubServer(TOKEN) as hub:
        queue.put(hub.endpoint)
        stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-mb", type=int, default=24)
    ap.add_argument("--commit-mb", type=int, default=32)
    args = ap.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.support.run_dir import make_run_dir

    run = make_run_dir(Path(tempfile.mkdtemp()), rows=10, files=1)
    rows_per, blob = 64, args.shard_mb * 1024 * 1024 // 64
    for i in range(args.shards):
        table = pa.table({"id": [f"b{i}-{j}" for j in range(rows_per)], "blob": [os.urandom(blob) for _ in range(rows_per)]})
        pq.write_table(table, run / "export" / "data" / f"train-big{i:03d}.parquet", compression="none")
    total_rows = 10 + args.shards * rows_per
    for name in ("export",):
        path = run / name / "_manifest.json"
        m = json.loads(path.read_text())
        m["rows"] = {"in": total_rows, "out": total_rows, "filtered": 0, "rejected": 0}
        path.write_text(json.dumps(m))
    path = run / "04_entities" / "_manifest.json"
    m = json.loads(path.read_text())
    m["rows"] = {"in": total_rows, "out": total_rows, "filtered": 0, "rejected": 0}
    path.write_text(json.dumps(m))

    queue, stop = mp.Queue(), mp.Event()
    server = mp.Process(target=serve, args=(queue, stop))
    server.start()
    endpoint = queue.get()
    os.environ.update(HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0", HF_HOME=tempfile.mkdtemp())
    from pipeline.io.hub import RetryConfig
    from pipeline.publish import PushConfig, push_run

    # Every column but the blobs was read by the card; measure from here.
    base = reset_peak_rss() / 2**20  # RSS now; the peak (VmHWM) counts from here
    cfg = PushConfig(repo="bench/push", endpoint=endpoint, max_commit_bytes=args.commit_mb << 20,
                     retry=RetryConfig(base_wait_s=0.1))
    report = push_run(str(run), cfg)
    peak = peak_rss_bytes() / 2**20
    stop.set()
    server.join()
    sizes = [p.stat().st_size / 2**20 for p in (run / "export" / "data").iterdir()]
    print(json.dumps({"files": len(report.uploaded), "commits": report.commits, "export_mib": round(sum(sizes)),
                      "largest_file_mib": round(max(sizes), 1), "peak_rss_before_push_mib": round(base),
                      "peak_rss_mib": round(peak), "growth_mib": round(peak - base)}))


if __name__ == "__main__":
    main()
