"""`OUT/report.json` and `OUT/comparison.png` of `fusegen eval`, and the comparisons' noise verdicts.

A difference between two variants is called within noise when it is no larger than twice the combined
seed spread (sqrt(sd_a² + sd_b²)) or smaller than one validation query (1 / queries): three seeds and a
small validation split cannot tell such differences from chance, and the report and the card say so.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os

from pipeline.config import to_dict
from pipeline.eval.config import EvalConfig

REPORT = "report.json"
PLOT = "comparison.png"
# (variant a, variant b, question) compared on the headline metric.
PAIRS = (("mined", "untuned", "does training on the run's rows help?"),
         ("mined", "in_batch", "does mining hard negatives help?"))


def comparisons(variants: dict, metric: str, queries: int) -> list[dict]:
    """Mean differences with a within-noise verdict: the pairs above plus each image source vs mined."""
    pairs = [p for p in PAIRS if p[0] in variants and p[1] in variants]
    pairs += [(v, "mined", f"rows with {v.split(':', 1)[1]} images alone vs all rows")
              for v in variants if v.startswith("source:") and "mined" in variants]
    out = []
    for a, b, question in pairs:
        ma, mb = variants[a]["mean"]["all"][metric], variants[b]["mean"]["all"][metric]
        if ma is None or mb is None:
            continue
        sa, sb = variants[a]["std"]["all"][metric], variants[b]["std"]["all"][metric]
        noise = max(2 * math.sqrt(sa**2 + sb**2), 1.0 / max(queries, 1))
        diff = ma - mb
        out.append({"a": a, "b": b, "question": question, "metric": metric, "a_mean": ma, "b_mean": mb,
                    "diff": diff, "noise": noise, "within_noise": abs(diff) <= noise})
    return out


def build_report(result: dict, cfg: EvalConfig, path: str, progress_note: str = "") -> dict:
    data = result["data"]
    variants = {name: {k: v for k, v in r.items()} for name, r in result["variants"].items()}
    queries = len(data.validation)
    headline = f"recall@{min(cfg.ks)}"
    towers = result["towers"]
    tiny = [side for side in ("text", "image") if towers.get(side) and towers[side]["random_tiny"]]
    sources: dict[str, int] = {}
    for q in data.train:
        sources[q.source or "unknown"] = sources.get(q.source or "unknown", 0) + 1
    report = {
        "fusegen_eval": 1,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {"path": os.path.abspath(path), "format": data.format, "root": data.root},
        "data": {
            "train_rows": len(data.train),
            "validation_rows": queries,
            "pool": len(data.candidates),
            "candidate_mode": data.candidate_mode,
            "images": len(data.images),
            "split": "export" if data.holdout is None else "seeded_holdout",
            "holdout": data.holdout,
            "negatives_per_row": result["negatives"],
            "left_out": result["notes"],
            "train_image_sources": sources,
            "validation_tasks": _count(q.task for q in data.validation),
            "ignored_splits": data.ignored_splits,
            "sampled_out": data.sampled_out,
            "read_problems": {"count": data.problem_count, "first": data.problems},
        },
        "towers": towers,
        "random_tiny_towers": tiny,
        "train": {**to_dict(cfg.train), "trainable": cfg.train.trainable},
        "config": to_dict(cfg),
        "headline_metric": headline,
        "variants": variants,
        "comparisons": comparisons(variants, headline, queries),
        "eval_sets": [{"name": s.name, "path": s.path, "format": s.format, "queries": len(s.queries),
                       "left_out": s.left_out} for s in result["sets"]],
        "timing": {"embed_s": result["embed_s"], "total_s": result["total_s"]},
    }
    report["summary"] = summary(report)
    return report


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def summary(report: dict) -> list[str]:
    """Plain sentences: what was measured, and an honest one when the differences are within noise."""
    data = report["data"]
    lines = [(f"{data['validation_rows']} validation queries against a pool of {data['pool']} candidates; "
             f"{data['train_rows']} training rows, {len(report['train']['seeds'])} seeds.")]
    if report["random_tiny_towers"]:
        lines.append(f"The {' and '.join(report['random_tiny_towers'])} tower(s) are random tiny models: this run "
                     "checks the plumbing, it measures nothing about the data.")
    for c in report["comparisons"]:
        verdict = ("within noise: this evaluation cannot tell them apart" if c["within_noise"]
                   else ("better" if c["diff"] > 0 else "worse"))
        lines.append(f"{c['a']} vs {c['b']} ({c['question']}): {c['metric']} {c['a_mean']:.3f} vs "
                     f"{c['b_mean']:.3f}, {c['diff']:+.3f} (noise ±{c['noise']:.3f}): {verdict}.")
    if data["validation_rows"] < 30:
        lines.append(f"Only {data['validation_rows']} validation queries: one query moves recall by "
                     f"{1 / max(data['validation_rows'], 1):.3f}.")
    return lines


def write_report(report: dict, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, REPORT)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def read_report(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, REPORT)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def plot(report: dict, out_dir: str) -> str:
    """Grouped bars: each variant's recall@k and MRR (mean over seeds, seed spread as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["variants"])
    metrics = [m for m in report["variants"][names[0]]["mean"]["all"] if m != "queries"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.2), dpi=110)
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        means = [report["variants"][n]["mean"]["all"][metric] or 0.0 for n in names]
        stds = [report["variants"][n]["std"]["all"].get(metric) or 0.0 for n in names]
        xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=metric)
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("validation")
    tiny = " (random tiny towers)" if report["random_tiny_towers"] else ""
    ax.set_title(f"fusegen eval: {report['data']['validation_rows']} queries, "
                 f"{len(report['train']['seeds'])} seeds{tiny}", fontsize=9)
    ax.legend(fontsize=7, ncol=len(metrics), loc="upper right")
    fig.tight_layout()
    path = os.path.join(out_dir, PLOT)
    fig.savefig(path)
    plt.close(fig)
    report["plot"] = PLOT
    return path
