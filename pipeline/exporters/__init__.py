"""Exporters: a finished run's GME triplets (RUN_DIR/export/data) in the formats other projects train on.

`export_run(run_dir, fmt, out)` writes one format into `out` (one module per format: gme, ms_swift,
mmeb, mbeir), images written once as content-named files referenced by relative paths;
`validate(path)` (validate.py) reads any of them back the way its consumer's loader does and checks it.

Negatives per row: `--negatives N` keeps every row's N hardest and drops rows with fewer (counted
in the marker as `dropped.fewer_negatives`). Without it, ms-swift keeps the smallest count in the run
(every row as many, none dropped), MMEB its one hardest where there is one, M-BEIR all of them; the
GME copy keeps the rows as the run wrote them.
"""

from __future__ import annotations

import os

from pipeline.errors import ExportError
from pipeline.exporters import gme, mbeir, mmeb, ms_swift
from pipeline.exporters.outdir import OutDir
from pipeline.exporters.source import negatives_policy, open_run

FORMATS = ("gme", "ms-swift", "mmeb", "mbeir")
# The format's negatives default and the most negatives one of its rows can hold.
_DEFAULTS = {"ms-swift": ("min", None), "mmeb": ("one", 1), "mbeir": ("all", None)}


def export_run(run_dir: str, fmt: str, out: str, force: bool = False, legacy: bool = False,
               negatives: int | None = None) -> dict:
    """Export a finished run; returns the marker written last (`OUT/_fusegen_export.json`)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    if legacy and fmt != "ms-swift":
        raise ExportError("--ms-swift-legacy applies to --format ms-swift only")
    if fmt == "gme" and negatives is not None:
        raise ExportError("--negatives does not apply to --format gme: it copies the triplets as the run wrote them")
    source = open_run(run_dir)
    if "://" not in source.root and _inside(os.path.abspath(out), source.root):
        raise ExportError(f"--out {out} lies inside the run dir {source.root}; export to a folder outside it")
    policy = None
    if fmt != "gme":
        default, cap = _DEFAULTS[fmt]
        policy = negatives_policy(source, negatives, default, cap)
    options = {"negatives": negatives, "ms_swift_legacy": legacy,
               "negatives_kept": None if policy is None else policy.keep}
    target = OutDir(out, source.root, fmt, options, force)
    if fmt == "gme":
        counts = gme.write(source, target)
    elif fmt == "ms-swift":
        counts = ms_swift.write(source, target, policy, legacy)
    elif fmt == "mmeb":
        counts = mmeb.write(source, target, policy)
    else:
        counts = mbeir.write(source, target, policy)
    rows = source.export_manifest.get("rows") or {}
    return target.finish({
        "run_fingerprint": source.export_manifest.get("fingerprint"),
        "run_rows_out": rows.get("out"),
        "splits": {s: c["written"] for s, c in counts.items()},
        "source_rows": {s: c["read"] for s, c in counts.items()},
        "dropped": {"fewer_negatives": sum(c["read"] - c["written"] for c in counts.values())},
        "image_bytes": target.image_bytes,
    })


def _inside(path: str, root: str) -> bool:
    root = os.path.abspath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
