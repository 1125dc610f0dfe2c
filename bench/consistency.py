"""consistency stage: throughput and memory, and embedding through Ray vs a bare `encode` loop.

    python bench/consistency.py --passages 100000 --queries 100000

1. Ingest N synthetic passages with `fusegen run` (stages ingest, export).
2. Write M queries as the doc2query output (each a few words drawn from one passage, so the round
   trip has something to find), then run the real consistency stage through the runner on an
   embedded Ray: pool index build (N passages) + query embedding and faiss search (M queries).
   Memory: PSS of this process and all its children (the Ray processes), sampled every 0.5 s.
3. The same work bare in one process: `TextEmbedder.encode` over the same texts (torch on both cores)
   and the same flat faiss search. ratio = bare s / Ray s; target (issue #4) >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, TreeMemory, fusegen, gib, machine, manifest, write_corpus

TARGET = 0.8


def write_queries(run_dir: Path, m: int, seed: int = 0) -> None:
    passages = pq.read_table(run_dir / "01_ingest", columns=["id", "text"]).to_pylist()
    rng = random.Random(seed)
    rows = []
    for i in range(m):
        p = passages[i % len(passages)]
        words = p["text"].rstrip(".").split()
        start = rng.randint(0, max(0, len(words) - 8))
        rows.append({"id": f"{p['id']}-q{i}", "doc_id": p["id"], "query": " ".join(words[start:start + 8]) + "?"})
    out = run_dir / "02_doc2query"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "part-000000.parquet")


def ray_run(run_dir: Path, overrides: list[str]) -> tuple[float, float, TreeMemory, float]:
    from pipeline.rundir import RunContext
    from pipeline.runner import Target, _run_stage
    from pipeline.settings import build_stages, load_config
    from pipeline.stage import StageOutput

    config = load_config(REPO / "configs" / "base.yaml", ["ray.num_cpus=2", *overrides])
    ctx = RunContext.create(config, str(run_dir))
    stage = next(s for s in build_stages(config, ctx) if s.name == "consistency")
    stage.prepare()
    ingest_fp = manifest(run_dir, "01_ingest")["fingerprint"]
    from pipeline.raycluster import init_ray

    init_ray(config.ray)  # once per run, not per stage: outside the timing
    with TreeMemory(os.getpid()) as mem:
        start = time.perf_counter()
        ingest = StageOutput("ingest", ingest_fp, tuple(map(str, sorted((run_dir / "01_ingest").glob("part-*.parquet")))))
        queries = StageOutput("doc2query", "bench", (str(run_dir / "02_doc2query" / "part-000000.parquet"),))
        _run_stage(ctx, stage, Target(ctx.run_uri, "03_consistency", "03_consistency"), queries, "bench", {},
                   {"ingest": ingest})
        wall = time.perf_counter() - start
    pool = next((run_dir / "_index").glob("text-*/_manifest.json")).parent.name
    # The pool's seconds: embedding it (a side stage) plus writing the faiss index (_index.json).
    pool_s = manifest(run_dir, f"_index/{pool}")["seconds"]
    pool_s += json.loads((run_dir / "_index" / pool / "_index.json").read_text())["seconds"]
    return pool_s, manifest(run_dir, "03_consistency")["seconds"], mem, wall


def bare_run(run_dir: Path) -> tuple[float, int]:
    import torch

    from pipeline.io.indexes import build_faiss
    from pipeline.models.sources import resolve_model
    from pipeline.models.text_embed import TextEmbedConfig, TextEmbedder, passage_texts
    from pipeline.stages.consistency import source_ranks

    torch.set_num_threads(2)
    passages = pq.read_table(run_dir / "01_ingest", columns=["id", "title", "text"])
    queries = pq.read_table(run_dir / "02_doc2query").to_pylist()
    cfg = TextEmbedConfig()
    start = time.perf_counter()
    path, _ = resolve_model(cfg.model, None)
    embedder = TextEmbedder(path, cfg)
    pool = embedder.encode(passage_texts(passages["title"].to_pylist(), passages["text"].to_pylist(), cfg), 64)
    row_of = {d: i for i, d in enumerate(passages["id"].to_pylist())}
    index = build_faiss(pool)
    kept = 0
    for s in range(0, len(queries), 1024):
        chunk = queries[s:s + 1024]
        vecs = embedder.encode([q["query"] for q in chunk], 64)
        _, hits = index.search(vecs, 20)
        kept += sum(r is not None for r in source_ranks(hits, [row_of[q["doc_id"]] for q in chunk]))
    return time.perf_counter() - start, kept


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--work", default="/tmp/fg-bench-consistency")
    ap.add_argument("--set", action="append", default=[], help="config override for the Ray run")
    args = ap.parse_args()
    work = Path(args.work)
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    corpus = write_corpus(work / f"corpus-{args.passages}.jsonl", args.passages, seed=2, words=(30, 60))
    fusegen("run", "configs/base.yaml", "--run-dir", str(run_dir), "--set", "stages=[ingest, export]", "--set", "export.schema=passthrough",
            "--set", f"ingest.path={corpus}", "--set", "ray.num_cpus=2")
    write_queries(run_dir, args.queries)
    pool_s, stage_s, mem, _ = ray_run(run_dir, args.set)
    query_s = stage_s - pool_s  # the stage's seconds include building the pool index
    m = manifest(run_dir, "03_consistency")
    bare_s, bare_kept = bare_run(run_dir)
    ray_s = pool_s + query_s
    print(f"machine: {machine()}")
    print(f"{manifest(run_dir, '01_ingest')['rows']['out']:,} passages x {args.queries:,} queries, all-MiniLM-L6-v2, "
          f"top_k 20, flat index, overrides {args.set or 'none'}")
    print(f"Ray: pool index {pool_s:.1f} s + consistency {query_s:.1f} s = {ray_s:.1f} s "
          f"({args.queries / query_s:,.0f} queries/s, {(args.passages + args.queries) / ray_s:,.0f} texts/s), "
          f"peak PSS {gib(mem.peak_pss)}, kept {m['rows']['out']:,}")
    print(f"bare encode loop: {bare_s:.1f} s, kept {bare_kept:,} | ratio {bare_s / ray_s:.2f} (target >= {TARGET})")
    return 0 if bare_s / ray_s >= TARGET and bare_kept == m["rows"]["out"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
