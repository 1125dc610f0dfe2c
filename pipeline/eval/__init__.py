"""`fusegen eval`: does a run's data help? Fine-tune a small retriever on it and report the gain.

`evaluate(path, cfg)` reads a finished run (or any export fusegen reads), trains a fused-modal dual
encoder (pipeline/eval/model.py) on its train split under each variant and seed, ranks its validation
queries against the whole candidate pool (recall@k, MRR@k per task type), and writes
`OUT/report.json` and `OUT/comparison.png` (OUT: `RUN_DIR/eval` by default). No Ray is involved.
"""

from __future__ import annotations

import os

from pipeline.eval.config import EvalConfig, load_eval_config
from pipeline.eval.report import build_report, plot, write_report
from pipeline.eval.runner import Progress, run_eval

__all__ = ["EvalConfig", "default_out", "evaluate", "load_eval_config"]
OUT = "eval"


def default_out(path: str) -> str:
    """Where the report goes by default: `<path>/eval` (a run dir's, or an export folder's)."""
    return os.path.join(os.path.abspath(path), OUT)


def evaluate(path: str, cfg: EvalConfig, out_dir: str | None = None, progress: Progress | None = None) -> dict:
    """Run the comparison and write the report and its plot; returns the report."""
    out_dir = out_dir or default_out(path)
    report = build_report(run_eval(path, cfg, progress), cfg, path)
    os.makedirs(out_dir, exist_ok=True)
    plot(report, out_dir)
    report["report"] = write_report(report, out_dir)
    return report
