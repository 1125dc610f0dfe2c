"""Exporters: a finished run's triplets (RUN_DIR/export/data) in the formats other projects train on.

`export_run(run_dir, fmt, out)` writes one format into `out` (one module per format: gme, megapairs,
ms_swift, mmeb, mbeir), images written once as content-named files referenced by relative paths;
GME runs go to gme, ms-swift, mmeb and mbeir; MegaPairs runs (`export.schema: megapairs`) to
megapairs (the released layout), ms-swift and mmeb (query image + instruction -> target image;
`instructions`: "first" = one row per pair, "all" = one per (pair, instruction)); a format that cannot
take the run's schema says so (`RunSource.require`).
`validate(path)` (validate.py) reads any of them back the way its consumer's loader does and checks it.

Negatives per row: `--negatives N` keeps every row's N hardest and drops rows with fewer (counted
in the marker as `dropped.fewer_negatives`). Without it, ms-swift keeps the smallest count in the run
(every row as many, none dropped), MMEB its one hardest where there is one, M-BEIR all of them; the
GME copy keeps the rows as the run wrote them.
"""

from __future__ import annotations

import os

from pipeline.errors import ExportError
from pipeline.exporters import gme, mbeir, megapairs, mmeb, ms_swift
from pipeline.exporters.outdir import OutDir
from pipeline.exporters.source import negatives_policy, open_run
from pipeline.triplets_megapairs import INSTRUCTION_MODES

FORMATS = ("gme", "megapairs", "ms-swift", "mmeb", "mbeir")
# The format's negatives default and the most negatives one of its rows can hold.
_DEFAULTS = {"ms-swift": ("min", None), "mmeb": ("one", 1), "mbeir": ("all", None)}


def export_run(run_dir: str, fmt: str, out: str, force: bool = False, legacy: bool = False,
               negatives: int | None = None, instructions: str = "first") -> dict:
    """Export a finished run; returns the marker written last (`OUT/_fusegen_export.json`)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    if instructions not in INSTRUCTION_MODES:
        raise ExportError(f"--instructions must be one of {', '.join(INSTRUCTION_MODES)} (got {instructions!r})")
    if legacy and fmt != "ms-swift":
        raise ExportError("--ms-swift-legacy applies to --format ms-swift only")
    if fmt in ("gme", "megapairs") and negatives is not None:
        raise ExportError(f"--negatives does not apply to --format {fmt}: it writes the triplets as the run wrote them")
    source = open_run(run_dir)
    source.require(fmt)
    if instructions != "first" and source.schema != "megapairs":
        raise ExportError("--instructions applies to MegaPairs runs only (export.schema: megapairs)")
    if "://" not in source.root and _inside(os.path.abspath(out), source.root):
        raise ExportError(f"--out {out} lies inside the run dir {source.root}; export to a folder outside it")
    policy = None
    if fmt not in ("gme", "megapairs"):
        default, cap = _DEFAULTS[fmt]
        policy = negatives_policy(source, negatives, default, cap)
    options = {"negatives": negatives, "ms_swift_legacy": legacy,
               "negatives_kept": None if policy is None else policy.keep, "schema": source.schema}
    if source.schema == "megapairs":
        options["instructions"] = instructions
    target = OutDir(out, source.root, fmt, options, force)
    try:
        if fmt == "gme":
            counts = gme.write(source, target)
        elif fmt == "megapairs":
            counts = megapairs.write(source, target)
        elif fmt == "ms-swift":
            counts = ms_swift.write(source, target, policy, legacy, instructions)
        elif fmt == "mmeb":
            counts = mmeb.write(source, target, policy, instructions)
        else:
            counts = mbeir.write(source, target, policy)
    except BaseException:
        target.abandon()
        raise
    rows = source.export_manifest.get("rows") or {}
    return target.finish({
        "run_fingerprint": source.export_manifest.get("fingerprint"),
        "run_rows_out": rows.get("out"),
        "splits": {s: c["written"] for s, c in counts.items()},
        "source_rows": {s: c["read"] for s, c in counts.items()},
        "dropped": {"fewer_negatives": sum(c.get("dropped", c["read"] - c["written"]) for c in counts.values())},
        "image_bytes": target.image_bytes,
    })


def _inside(path: str, root: str) -> bool:
    root = os.path.abspath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
