"""What the finished-run builders (tests/support/gme_run.py, megapairs_run.py) share: small real PNGs, the
upstream table with its column types, the export stage's worker and driver halves run without Ray
(`write_pieces`, the shard committer, the markers' totals) and run.yaml plus one complete manifest per section.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import yaml
from PIL import Image

from pipeline import __version__
from pipeline.io.commit import ShardCommitter, write_pieces
from pipeline.io.fs import RunFS
from pipeline.io.manifest import aggregate_markers
from pipeline.stages.export import Export, ExportConfig


def png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def typed_table(rows: list[dict], types: dict[str, pa.DataType]) -> pa.Table:
    """`rows` as a table whose columns named in `types` are cast to those types (image references, float32)."""
    table = pa.Table.from_pylist(rows)
    for name, tp in types.items():
        table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(tp))
    return table


def manifest(stage: str, rows: dict, reasons: dict | None = None, models: dict | None = None) -> dict:
    return {
        "stage": stage, "fingerprint": f"fp-{stage}", "status": "complete", "rows": rows,
        "reasons": reasons or {}, "seconds": 1.0, "models": models or {}, "decision": "run: first run",
        "config": {},
    }


def commit_export(run: Path, config: ExportConfig, rows_in: int, out: pa.Table) -> tuple[dict, dict]:
    """Write the export batch `out` (made from `rows_in` upstream rows, shard 000000) under `run/export/data`
    as the export workers do and commit it as the driver does; the export's (counts, reasons)."""
    run_fs = RunFS.from_uri(str(run))
    stage = Export(config, SimpleNamespace(run_uri=str(run)))
    progress = SimpleNamespace(update=lambda n, counts: None)
    committer = ShardCommitter(run_fs, stage, "export", [SimpleNamespace(shard="000000", rows=rows_in)], progress)
    committer.add(write_pieces(out, str(run), stage, "export", "export/data"))
    committer.finish()
    counts, reasons, _ = aggregate_markers(run_fs, "export")
    return counts, dict(reasons)


def write_run_files(run: Path, run_yaml: dict, ledgers: dict[str, tuple[dict, dict]], models: dict) -> None:
    """run.yaml (`run_yaml` plus the version) and a complete manifest per section of `ledgers` (stage ->
    (rows, reasons), in run order: `NN_<stage>/`, the last `export/`)."""
    run_fs = RunFS.from_uri(str(run))
    run_fs.write_bytes("run.yaml", yaml.safe_dump({"fusegen_version": __version__, **run_yaml}).encode())
    for i, (name, (rows, reasons)) in enumerate(ledgers.items(), start=1):
        folder = "export" if name == "export" else f"{i:02d}_{name}"
        run_fs.write_json(f"{folder}/_manifest.json", manifest(name, rows, reasons, models.get(name)))
