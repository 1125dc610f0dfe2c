"""`fusegen validate DIR`: read an export back the way its consumer's loader does, and check it.

The format comes from the `_fusegen_export.json` marker, else from the files (a run dir or its
`export/` folder: GME or MegaPairs Parquet, by columns; `annotation/`: MegaPairs; `train.jsonl`:
ms-swift; `fusegen/*.parquet`: MMEB; `query/` with `cand_pool/`: M-BEIR). Checks, for every format:

- schema: the fields, list shapes and image references its loader reads (format module `read`);
- every image decodes (Pillow `verify`, then a full `load`), each distinct image once;
- no positive among its own negatives: same doc id, same text, or same (text, image) content hash;
  (MegaPairs: the target image among the negatives, by content);
- no duplicate triplet id; no doc id whose rows sit in two splits (train / validation), for MegaPairs
  rows no query image (`query_id`);
- row counts: per split as the marker says, and the run's export manifest (when the marker or the
  folder names the run) equal to the rows read, plus the rows the exporter dropped.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from dataclasses import dataclass, field

from PIL import Image

from pipeline.errors import ExportError
from pipeline.exporters import gme, mbeir, megapairs, mmeb, ms_swift
from pipeline.exporters.outdir import MARKER, read_marker
from pipeline.exporters.view import Candidate, Img, Problems, Triplet
from pipeline.io.fs import RunFS
from pipeline.io.images import ALLOWED_FORMATS, ImageError, decode_image
from pipeline.io.manifest import MANIFEST

READERS = {"gme": gme.read, "megapairs": megapairs.read, "ms-swift": ms_swift.read, "mmeb": mmeb.read,
           "mbeir": mbeir.read}


@dataclass
class Report:
    path: str
    format: str
    problems: Problems
    rows: Counter = field(default_factory=Counter)
    images: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def detect(path: str) -> tuple[str, str, dict | None, str | None]:
    """(format, root of the export files, marker or None, run dir or None)."""
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, "run.yaml")):
        export = os.path.join(path, "export")
        return ("megapairs" if megapairs.is_megapairs_parquet(export) else "gme"), export, None, path
    marker = read_marker(path)
    if marker is not None:
        if marker.get("format") not in READERS:
            raise ExportError(f"{path}: its export marker names an unknown format {marker.get('format')!r}")
        return marker["format"], path, marker, marker.get("run_dir")
    parent = os.path.dirname(path)
    if os.path.isdir(os.path.join(path, gme.DATA)):
        fmt = "megapairs" if megapairs.is_megapairs_parquet(path) else "gme"
        return fmt, path, None, parent if os.path.isfile(os.path.join(parent, "run.yaml")) else None
    if os.path.isdir(os.path.join(path, megapairs.ANNOTATION)):
        return "megapairs", path, None, None
    if any(os.path.isfile(os.path.join(path, n)) for n in ms_swift.FILES.values()):
        return "ms-swift", path, None, None
    if os.path.isdir(os.path.join(path, mmeb.CONFIG)):
        return "mmeb", path, None, None
    if os.path.isdir(os.path.join(path, "query")) and os.path.isdir(os.path.join(path, "cand_pool")):
        return "mbeir", path, None, None
    raise ExportError(
        f"{path}: not an export fusegen knows (no {MARKER}, run.yaml, data/*.parquet, annotation/, train.jsonl, "
        "fusegen/ or query/ + cand_pool/)"
    )


class _Images:
    """Decode each distinct image once; remember its content hash for the positive/negative check."""

    def __init__(self, problems: Problems) -> None:
        self.problems, self.seen = problems, {}

    def sha(self, img: Img | None) -> str | None:
        if img is None:
            return None
        key = img.path or hashlib.sha256(img.data or b"").hexdigest()
        if key not in self.seen:
            self.seen[key] = self._check(img)
        return self.seen[key]

    def _check(self, img: Img) -> str | None:
        try:
            data = img.read()
        except OSError as exc:
            self.problems.add(img.where, f"image {img.path} cannot be read ({exc.strerror or exc})")
            return None
        try:
            # The one loader first (allowed formats only: an exported dataset is untrusted input too),
            # then Pillow's structure check (a PNG chunk CRC the decoder does not read).
            decode_image(data)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
                im.verify()
        except ImageError as exc:
            where = img.path or "(inline)"
            self.problems.add(img.where, f"image {where} does not decode (error:image_{exc})")
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken images
            self.problems.add(img.where, f"image {img.path or '(inline)'} does not decode ({type(exc).__name__}: {exc})")
        return hashlib.sha256(data).hexdigest()


def _content(c: Candidate, image_sha: str | None) -> str:
    return hashlib.sha256(f"{' '.join(c.text.split())}\x1f{image_sha}".encode()).hexdigest()


def _check_triplet(t: Triplet, images: _Images, problems: Problems) -> None:
    images.sha(t.query_image)
    pos_sha = images.sha(t.pos.image)
    pos_text, pos_content = " ".join(t.pos.text.split()), _content(t.pos, pos_sha)
    for k, neg in enumerate(t.negs):
        neg_sha = images.sha(neg.image)
        if t.group is not None:
            # MegaPairs: candidates are images with one fixed text; the target among them by id or content.
            if (t.pos.doc_id is not None and neg.doc_id == t.pos.doc_id) or (pos_sha and neg_sha == pos_sha):
                problems.add(t.where, f"negative {k} is the target image (id {neg.doc_id!r}, same content)")
        elif t.pos.doc_id is not None and neg.doc_id == t.pos.doc_id:
            problems.add(t.where, f"negative {k} is the positive's own passage (doc_id {neg.doc_id!r})")
        elif (pos_text and " ".join(neg.text.split()) == pos_text) or _content(neg, neg_sha) == pos_content:
            problems.add(t.where, f"negative {k} has the positive's content (text{' and image' if pos_sha else ''})")


def validate(path: str, cap: int = 20) -> Report:
    fmt, root, marker, run_dir = detect(path)
    report = Report(root, fmt, Problems(cap))
    problems, images = report.problems, _Images(report.problems)
    if marker is not None and marker.get("status") != "complete":
        problems.add(MARKER, f"the export did not finish (status {marker.get('status')!r})")
    ids: set[str] = set()
    splits: dict[str, str] = {}
    for t in READERS[fmt](root, problems):
        report.rows[t.split] += 1
        if not t.id:
            problems.add(t.where, "row has no id")
        elif t.id in ids:
            problems.add(t.where, f"duplicate triplet id {t.id!r}")
        ids.add(t.id or "")
        doc, what = (t.group, "query") if t.group is not None else (t.pos.doc_id, "doc_id")
        if doc is not None and splits.setdefault(doc, t.split) != t.split:
            problems.add(t.where, f"{what} {doc!r} has rows in {splits[doc]} and {t.split}")
        _check_triplet(t, images, problems)
    report.images = len(images.seen)
    _check_counts(report, marker, run_dir)
    return report


def _check_counts(report: Report, marker: dict | None, run_dir: str | None) -> None:
    problems, rows = report.problems, report.rows
    if marker is not None:
        expected = marker.get("splits") or {}
        for split in sorted(set(expected) | set(rows)):
            if expected.get(split, 0) != rows.get(split, 0):
                problems.add("counts", f"{split}: the marker says {expected.get(split, 0)} rows, found {rows.get(split, 0)}")
    if not run_dir or "://" not in run_dir and not os.path.isdir(run_dir):
        return
    export = RunFS.from_uri(run_dir).read_json(f"export/{MANIFEST}") or {}
    out = (export.get("rows") or {}).get("out")
    read = sum((marker or {}).get("source_rows", rows).values())
    if out is not None and int(out) != read:
        problems.add("counts", f"the run's export manifest counts {out} rows out, the export holds {read}")
    if marker is not None and marker.get("run_fingerprint") not in (None, export.get("fingerprint")):
        problems.add("counts", "the run's export was re-run since this export was written (fingerprint differs)")
