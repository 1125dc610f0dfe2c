"""doc2query through the Ray runner vs a bare batched `generate` loop: same prompts, same model.

    python bench/doc2query_vs_generate.py [--passages 384] [--model tiny:qwen2]

1. `fusegen run` (embedded Ray, 2 CPUs) over a synthetic corpus; doc2query's wall time is read from
   its manifest (model loading in the actors included; Ray start-up is not, it is paid once per run).
2. In one process, the same messages (the stage's own `build_messages`), the same engine class
   (`HFChatJSON`, xgrammar-constrained), the same batches (shard by shard, `batch_size`), torch on
   every core. Model loading included.
ratio = bare seconds / Ray seconds (throughput of the Ray stage relative to the bare loop);
target (issue #3) >= 0.8. Also prints how many raw outputs are byte-identical between the two.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, fusegen, machine, manifest, write_corpus

TARGET = 0.8


def bare_loop(run_dir: Path, model: str, cache_dir: Path, shard_rows: int, batch_size: int, max_new_tokens: int):
    import pyarrow.parquet as pq
    import torch

    from pipeline.models.llm import HFChatJSON, LLMConfig
    from pipeline.models.sources import resolve_model
    from pipeline.prompts import load_sources
    from pipeline.stages.doc2query import PROMPTS, Doc2QueryConfig, build_messages, output_schema

    torch.set_num_threads(2)
    table = pq.read_table(run_dir / "01_ingest")
    cfg = Doc2QueryConfig(queries_per_passage=2, max_query_chars=40, max_answer_chars=20, passage_max_chars=1200,
                          llm=LLMConfig(model=model, max_new_tokens=max_new_tokens))
    sources = load_sources(REPO / "prompts", PROMPTS)
    ids = table["id"].to_pylist()
    convs = [build_messages(sources, cfg, t, x) for t, x in zip(table["title"].to_pylist(), table["text"].to_pylist())]
    start = time.perf_counter()
    path, _ = resolve_model(model, cache_dir, None, "bench")
    engine = HFChatJSON(path, cfg.llm, output_schema(cfg))
    raws = {}
    for s in range(0, len(convs), shard_rows):
        for doc_id, (raw, _) in zip(ids[s : s + shard_rows], engine.generate(convs[s : s + shard_rows], batch_size)):
            raws[doc_id] = raw
    return time.perf_counter() - start, raws


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=384)
    ap.add_argument("--model", default="tiny:qwen2")
    ap.add_argument("--max-new-tokens", type=int, default=300)
    ap.add_argument("--shard-rows", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--work", default="/tmp/fg-bench-d2q")
    args = ap.parse_args()
    work = Path(args.work)
    cache = Path.home() / ".cache" / "fusegen"
    corpus = write_corpus(work / "corpus.jsonl", args.passages, seed=1, words=(30, 60))
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    fusegen(
        "run", "configs/demo.yaml", "--run-dir", str(run_dir), "--set", f"ingest.path={corpus}",
        "--set", f"doc2query.llm.model={args.model}", "--set", f"doc2query.llm.max_new_tokens={args.max_new_tokens}",
        "--set", f"doc2query.resources.shard_rows={args.shard_rows}",
        "--set", f"doc2query.resources.batch_size={args.batch_size}",
        "--set", f"doc2query.resources.concurrency={args.concurrency}", "--set", f"cache_dir={cache}",
        # Short strings so a random tiny model closes its JSON within max_new_tokens (as the e2e tests).
        "--set", "doc2query.max_query_chars=40", "--set", "doc2query.max_answer_chars=20",
    )
    ray_s = manifest(run_dir, "02_doc2query")["seconds"]
    bare_s, bare_raw = bare_loop(run_dir, args.model, cache, args.shard_rows, args.batch_size, args.max_new_tokens)

    import pyarrow.parquet as pq

    out = pq.read_table(run_dir / "02_doc2query", columns=["doc_id", "llm_raw"]).to_pylist()
    ray_raw = {r["doc_id"]: r["llm_raw"] for r in out}
    same = sum(ray_raw[d] == bare_raw.get(d) for d in ray_raw)
    ratio = bare_s / ray_s
    print(f"machine: {machine()}")
    print(f"{args.passages} passages, {args.model}, max_new_tokens {args.max_new_tokens}, shard_rows "
          f"{args.shard_rows}, batch_size {args.batch_size}, {args.concurrency} actors x 1 CPU")
    print(f"ray doc2query stage {ray_s:.1f} s | bare generate loop {bare_s:.1f} s | ratio {ratio:.2f} "
          f"(target >= {TARGET}) | identical raw outputs {same}/{len(ray_raw)} exported passages")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
