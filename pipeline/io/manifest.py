"""`_manifest.json` and per-shard commit markers (DESIGN.md §2 fixes the manifest keys).

Keys other tools read: stage, fingerprint, status, rows {in, out, filtered, rejected}, reasons,
seconds, models. fusegen adds: decision (why the stage ran or was skipped), config (the values that
fed the fingerprint), shards {planned, done}, input_rows, fanout, error.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from pipeline.errors import LedgerError
from pipeline.io.fs import RunFS

MANIFEST = "_manifest.json"
PARTS_MARK = "_parts"
REJECTS = "_rejects"


def fingerprint(stage: str, semantic_config: dict, prompt_paths: list[Path], upstream: str, version: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"stage": stage, "config": semantic_config, "version": version}, sort_keys=True).encode())
    for path in sorted(prompt_paths):
        h.update(str(path.name).encode())
        h.update(path.read_bytes())
    h.update(upstream.encode())
    return h.hexdigest()[:24]


def empty_counts() -> dict:
    return {"in": 0, "out": 0, "filtered": 0, "rejected": 0}


def aggregate_markers(run_fs: RunFS, stage_dir: str) -> tuple[dict, Counter, dict[str, dict]]:
    """Sum committed shard markers: (rows, reasons, markers by shard id)."""
    rows, reasons, markers = empty_counts(), Counter(), {}
    for name in run_fs.listdir(f"{stage_dir}/{PARTS_MARK}", ".json"):
        marker = run_fs.read_json(f"{stage_dir}/{PARTS_MARK}/{name}")
        markers[marker["shard"]] = marker
        for key in rows:
            rows[key] += marker["rows"][key]
        reasons.update(marker["reasons"])
    return rows, reasons, markers


# Up to this many files a stage's workers read are listed in its manifest; the markers keep them all.
LISTED_READS = 1000


def recorded_reads(markers: dict[str, dict]) -> list[dict]:
    """The identities of the local files a stage's workers read (`read` of its markers), each once."""
    seen = {json.dumps(e, sort_keys=True) for m in markers.values() for e in m.get("read", ())}
    return sorted((json.loads(e) for e in seen), key=lambda e: (e["path"], json.dumps(e, sort_keys=True)))


def reads_summary(read: list[dict]) -> dict:
    """The manifest's `read`: how many files the workers read, a digest of their identities (path, size
    and content hash or mtime; a hash makes the mtime irrelevant) and, up to LISTED_READS, their paths."""
    keys = sorted({json.dumps(_read_identity(e)) for e in read})
    out = {"count": len(keys), "sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest()}
    if len(keys) <= LISTED_READS:
        out["files"] = sorted({e["path"] for e in read})
    return out


def _read_identity(entry: dict) -> list:
    if "sha256" in entry:
        return [entry["path"], entry["size"], entry["sha256"]]
    return [entry["path"], entry.get("size"), entry.get("mtime_ns"), bool(entry.get("missing"))]


def output_fingerprint(fp: str, manifest: dict | None) -> str:
    """What the next stage's fingerprint chains on: the stage's own, and the digest of the files its
    workers read (a referenced image edited re-runs ingest, whose rows then differ, and all after it)."""
    read = (manifest or {}).get("read")
    if not read:
        return fp
    return hashlib.sha256(f"{fp}\0{read['sha256']}".encode()).hexdigest()[:24]


def check_ledger(stage: str, rows: dict, expected_in: int | None = None) -> None:
    """rows_in = rows_out + filtered + rejected, and rows_in = what the stage was given."""
    total = rows["out"] + rows["filtered"] + rows["rejected"]
    if rows["in"] != total:
        raise LedgerError(
            f"{stage}: ledger mismatch: in={rows['in']} but out+filtered+rejected={total} "
            f"(out={rows['out']}, filtered={rows['filtered']}, rejected={rows['rejected']})"
        )
    if expected_in is not None and rows["in"] != expected_in:
        raise LedgerError(f"{stage}: ledger mismatch: expected {expected_in} input rows, accounted {rows['in']}")


def config_diff(old: dict | None, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, for the 'why did this stage re-run' message."""
    if not isinstance(old, dict):
        return [prefix.rstrip(".") or "(all)"]
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def inputs_diff(old: dict | None, new: dict) -> list[str]:
    """'input files changed: a.jsonl, b.jsonl (added)' (and 'local images changed: ...') when the stage's
    input identity differs."""
    if (old or {}) == (new or {}):
        return []
    old, new = old or {}, new or {}
    sides = {
        "input files": ({"files": old.get("files", [])}, {"files": new.get("files", [])}),
        "local images": (old.get("images") or {"files": []}, new.get("images") or {"files": []}),
    }
    out = [f"{what} changed: {names}" for what, (a, b) in sides.items() if (names := _changed(a, b))]
    return out or ["input identity changed"]


def _changed(old: dict, new: dict) -> str:
    """The files that differ between two identity lists, or a count when they are digests."""
    if old == new:
        return ""
    if "files" not in old or "files" not in new:
        return f"{old.get('count', len(old.get('files', [])))} -> {new.get('count', len(new.get('files', [])))} files"
    before = {f["path"]: f for f in old["files"]}
    after = {f["path"]: f for f in new["files"]}
    names = [p + (" (added)" if p not in before else "") for p in after if before.get(p) != after[p]]
    names += [f"{p} (removed)" for p in before if p not in after]
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
