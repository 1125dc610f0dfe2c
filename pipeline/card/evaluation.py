"""The card's "Evaluation" section from `RUN_DIR/eval/report.json` (written by `fusegen eval`).

No report: no section. The comparison plot is copied to `export/assets/` so the card (and the Hub page)
shows it; every number comes from the report, with its seed spread, and the report's own sentences say
which differences are within noise and whether the towers were random tiny models.
"""

from __future__ import annotations

from pipeline.io.fs import RunFS

REPORT = "eval/report.json"
PLOT = "eval/comparison.png"
ASSET = "export/assets/eval_comparison.png"


def evaluation_context(run_fs: RunFS) -> dict | None:
    """The template's `evaluation` mapping, or None when the run has no eval report."""
    report = run_fs.read_json(REPORT)
    if not report:
        return None
    data, train, towers = report["data"], report["train"], report["towers"]
    names = list(report["variants"])
    metrics = [m for m in report["variants"][names[0]]["mean"]["all"] if m != "queries"]
    table = []
    for name in names:
        v = report["variants"][name]
        cells = [_cell(v["mean"]["all"].get(m), v["std"]["all"].get(m)) for m in metrics]
        table.append({"variant": name, "description": v["description"], "train_rows": v["train_rows"],
                      "cells": cells})
    split = ("its export's validation split (held out by doc id)" if data["split"] == "export" else
             f"a seeded doc-level hold-out ({data['holdout']['ratio']:.0%} of docs, seed {data['holdout']['seed']}; "
             "the run has no validation split)")
    image = towers.get("image")
    plot = None
    if run_fs.exists(PLOT):
        run_fs.write_bytes(ASSET, run_fs.read_bytes(PLOT))
        plot = ASSET.removeprefix("export/")
    total = report.get("timing", {}).get("total_s")
    return {
        "report_created": report.get("created", "?"),
        "data": (f"{data['validation_rows']} validation queries of {split} against the whole pool of "
                 f"{data['pool']} candidates ({data['candidate_mode']})"),
        "trained": (
            f"Towers: text `{towers['text']['identity']}`"
            + (f", image `{image['identity']}`" if image else ", no image tower")
            + f"; trained: {train['trainable']} only, {train['steps']} steps of batch {train['batch_size']} "
            f"(InfoNCE, temperature {train['temperature']}, {data['negatives_per_row']} hard negative(s) per row "
            f"where mined) on {data['train_rows']} training rows, seeds {', '.join(map(str, train['seeds']))}"
            + (f"; the whole evaluation took {total:.0f} s on {towers.get('device', '?')}." if total else ".")
        ),
        "tiny": " and ".join(report.get("random_tiny_towers") or []),
        "metrics": metrics,
        "table": table,
        "sentences": report.get("summary", []),
        "plot": plot,
    }


def _cell(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.3f} ± {std or 0.0:.3f}"
