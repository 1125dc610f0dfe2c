"""`fusegen status`: the funnel of a run directory, read from the stage manifests only."""

from __future__ import annotations

import yaml

from pipeline.io.fs import RunFS
from pipeline.io.manifest import MANIFEST
from pipeline.rundir import EXPORT_DIR, RUN_YAML


def collect_manifests(run_fs: RunFS) -> list[dict]:
    if not run_fs.exists(RUN_YAML):
        return []
    stages = (yaml.safe_load(run_fs.read_bytes(RUN_YAML)) or {}).get("stages", [])
    out = []
    for i, name in enumerate(stages, start=1):
        folder = EXPORT_DIR if name == "export" else f"{i:02d}_{name}"
        manifest = run_fs.read_json(f"{folder}/{MANIFEST}") or {"stage": name, "status": "not started"}
        manifest["folder"] = folder
        out.append(manifest)
    return out


def format_status(run_fs: RunFS) -> str:
    manifests = collect_manifests(run_fs)
    if not manifests:
        return f"{run_fs.root}: no run.yaml here (not a fusegen run directory)"
    head = (f"{'stage':<12} {'state':<12} {'input':>8} {'units':>8} {'out':>8} {'filtered':>8} {'rejected':>8} "
            f"{'seconds':>8}  fingerprint")
    lines = [f"run: {run_fs.root}", head, "-" * len(head)]
    for m in manifests:
        rows = m.get("rows") or {}
        shards = m.get("shards") or {}
        state = m.get("status", "?")
        if state == "running" and shards:
            state = f"running {shards.get('done', 0)}/{shards.get('planned', 0)}"
        lines.append(
            f"{m['stage']:<12} {state:<12} {m.get('input_rows', ''):>8} {rows.get('in', ''):>8} {rows.get('out', ''):>8} "
            f"{rows.get('filtered', ''):>8} {rows.get('rejected', ''):>8} {m.get('seconds', ''):>8}  "
            f"{m.get('fingerprint', '')}"
        )
        reasons = list((m.get("reasons") or {}).items())[:4]
        if reasons:
            lines.append("             top reasons: " + ", ".join(f"{r} ({n})" for r, n in reasons))
    return "\n".join(lines)
