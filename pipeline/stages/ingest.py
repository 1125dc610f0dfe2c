"""ingest: read the corpus, validate and normalise passages, dedup, assign stable ids.

Input: `ingest.path`, a JSONL/Parquet file, a folder of them, or a glob. Columns (names
configurable): doc_id, text, optional title, image (path relative to the file, bytes, or an HF image
struct), image_url, domain. Output columns: id, doc_id, doc_id_derived, text, title, domain, image
({bytes, path}), image_url, content_hash, source. Bad rows are rejects with a reason; duplicate
texts are filtered (`filter:duplicate_text`), a reused doc_id is `error:duplicate_doc_id`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from pipeline.columns import READ
from pipeline.config import check
from pipeline.io.corpus import (
    CorpusColumns,
    RecordError,
    RecordReject,
    plan_corpus,
    read_jsonl_shard,
    read_parquet_corpus_shard,
)
from pipeline.io.dedup import DedupRule, hex_keys, row_keys, text_keys
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.io.images import FittedImage, ImageError, ImageLimits, normalise_image
from pipeline.stage import OK, REJECTED, BlockStep, Resources, Stage, StageConfig, set_status

OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("doc_id", pa.string()),
        ("doc_id_derived", pa.bool_()),
        ("text", pa.string()),
        ("title", pa.string()),
        ("domain", pa.string()),
        ("image", IMAGE_REF),
        ("image_url", pa.string()),
        ("content_hash", pa.string()),
        ("source", pa.string()),
    ]
)
_CONTROL = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class IngestConfig(StageConfig):
    # The files' identity (`input_identity`: names under the input folder, sizes, content hashes) is
    # what enters the fingerprint, not the path string: the same corpus uploaded to another folder
    # (a `ray job submit --working-dir` on another cluster) resumes instead of starting over.
    OPERATIONAL: ClassVar[frozenset] = frozenset({"path"})

    # File, folder or glob; relative paths are resolved against the directory fusegen runs in.
    path: str = "samples/corpus/passages.jsonl"
    columns: CorpusColumns = dataclasses.field(default_factory=CorpusColumns)
    max_chars: int = 20000
    min_chars: int = 1
    images: ImageLimits = dataclasses.field(default_factory=ImageLimits)
    # How the input files enter the fingerprint (an edited corpus re-runs ingest and all after it):
    # `hash` (SHA-256 of the contents), `stat` (size and mtime; cheap for huge corpora, but a copy of
    # the same file, e.g. a `--working-dir` upload on a restarted cluster, counts as changed), or
    # `auto` (hash up to 2 GiB in all, stat beyond).
    identity: Literal["auto", "hash", "stat"] = "auto"
    # A shard also ends once it holds this many MB of input (JSONL bytes, or Parquet row groups'
    # uncompressed size): one task holds its whole shard, so with images inline rows alone are no cap.
    shard_mb: int = 512
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(shard_rows=2000, num_cpus=0.5))

    def __post_init__(self) -> None:
        check(bool(self.path), "ingest", "path", "must name a file, folder or glob")
        check(self.max_chars > 0, "ingest", "max_chars", f"must be > 0 (got {self.max_chars})")
        check(0 < self.min_chars <= self.max_chars, "ingest", "min_chars", "must be in 1..max_chars")
        check(self.shard_mb > 0, "ingest", "shard_mb", f"must be > 0 (got {self.shard_mb})")


def normalise_text(text: str) -> str:
    """NFC, control characters to spaces, whitespace runs collapsed, trimmed. `str.split()` splits at
    exactly the characters the regex `\\s` matches (checked over every code point in the unit tests), at a
    fifth of `re.sub`'s cost: it was a third of ingest's Python per row."""
    return " ".join(_CONTROL.sub(" ", unicodedata.normalize("NFC", text)).split())


def content_hash(text: str) -> str:
    return hashlib.sha256(text.casefold().encode("utf-8")).hexdigest()[:32]


def validate_record(record: dict, cfg: IngestConfig, load_image) -> dict:
    """One raw record -> one output row (raises RecordReject with `error:<kind>`)."""
    text = record.get("text")
    if text is None:
        raise RecordReject("error:missing_text")
    if not isinstance(text, str):
        raise RecordReject("error:wrong_type:text")
    text = normalise_text(_check_str(text))
    if len(text) < cfg.min_chars:
        raise RecordReject("error:empty_text")
    if len(text) > cfg.max_chars:
        raise RecordReject("error:text_too_long")
    doc_id, derived = record.get("doc_id"), False
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int, type(None))):
        raise RecordReject("error:wrong_type:doc_id")
    if isinstance(doc_id, str):
        _check_str(doc_id)
    doc_id = normalise_text(str(doc_id)) if doc_id is not None else ""
    if not doc_id:
        doc_id, derived = f"h{content_hash(text)[:16]}", True
    out = {"doc_id": doc_id, "doc_id_derived": derived, "text": text}
    for key in ("title", "domain", "image_url"):
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise RecordReject(f"error:wrong_type:{key}")
        out[key] = normalise_text(_check_str(value)) or None if value is not None else None
    if out["image_url"] and not re.match(r"^https?://[^\s/]+", out["image_url"], re.IGNORECASE):
        raise RecordReject("error:bad_image_url")
    out["image"] = _image(record.get("image"), cfg, load_image)
    out["content_hash"] = content_hash(text)
    return out


def _check_str(value: str) -> str:
    """Refuse what cannot be stored as text: NUL bytes, and lone surrogates (a JSON `\\ud800` escape
    decodes to one; Arrow strings are UTF-8 and refuse it, which would fail the whole shard)."""
    if "\x00" in value:
        raise RecordReject("error:nul_byte")
    if not _is_utf8(value):
        raise RecordReject("error:invalid_unicode")
    return value


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _image(value: Any, cfg: IngestConfig, load_image) -> FittedImage | None:
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data, path = value, None
    elif isinstance(value, str):
        data, path = None, value
    else:
        raise RecordReject("error:wrong_type:image")
    # An image struct is {bytes: binary or null, path: string or null}; anything else is a wrong type.
    if not isinstance(data, (bytes, bytearray, type(None))) or not isinstance(path, (str, type(None))):
        raise RecordReject("error:wrong_type:image")
    if path is not None:
        _check_str(path)
    if data is None and path:
        data = load_image(path)
    try:
        return normalise_image(bytes(data or b""), cfg.images)
    except ImageError as exc:
        raise RecordReject(f"error:image_{exc.kind}") from None


def ingest_batch(table: pa.Table, cfg: dict, run_uri: str, root: str | None = None) -> pa.Table:
    """Ray Data task: the raw corpus records of one shard -> validated rows with status and reason.

    Images go into the run's image store here, in the worker; rows carry their references. Each row
    also carries, in `_read`, the identity of the local image file it read (paths relative to the corpus
    root `root`): the shard's receipt takes them to the driver, which keeps them in the shard's marker."""
    from pipeline.config import build
    from pipeline.io.corpus import iter_records

    config = build(IngestConfig, cfg, "ingest", {})
    store = ImageStore.from_uri(run_uri)
    rows, statuses, reasons, read = [], [], [], []
    for record, where, base_dir in iter_records(table, config.columns):
        seen: list[dict] = []
        row, status, reason = _ingest_record(record, where, base_dir, config, store.put_fitted, root, seen)
        rows.append(row)
        statuses.append(status)
        reasons.append(reason)
        read.append(json.dumps(seen, sort_keys=True) if seen else None)
    out = pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
    for name in ("_shard", "_src", "_parent"):
        out = out.append_column(name, table[name])
    out = out.append_column(READ, pa.array(read, pa.string()))
    return set_status(out, statuses, reasons)


def _ingest_record(record, where: str, base_dir: str, config: IngestConfig,
                   put_image: Callable[[FittedImage], dict], root: str | None = None,
                   read: list[dict] | None = None) -> tuple[dict, str, str]:
    """One record -> (output row, status, reason); a kept row's image is stored by `put_image`, which
    returns its reference. The identity of a local image file the record names is appended to `read`
    (`io/corpus.read_entry`), whether the image was kept or rejected."""
    from pipeline.io.corpus import load_local_image, read_entry

    row = {k: None for k in OUTPUT_SCHEMA.names}
    row["source"], row["doc_id_derived"] = where, False
    max_bytes = config.images.max_bytes

    def load_image(path: str) -> bytes:
        data = None
        try:
            data = load_local_image(base_dir, path, max_bytes)
            return data
        finally:
            if read is not None:
                read.append(read_entry(root, base_dir, path, config.identity, data))

    try:
        if isinstance(record, RecordError):
            raise RecordReject(record.reason)
        row.update(validate_record(record, config, load_image))
        if row["image"] is not None:
            row["image"] = put_image(row["image"])
        row["id"] = row["doc_id"]
        return row, OK, ""
    except RecordReject as rej:
        row["id"] = _reject_id(record, where)
        return row, REJECTED, rej.reason


def _reject_id(record, where: str) -> str:
    """A reject keeps the id it came with, else its file:line, so the user can find it."""
    raw_id = record.get("doc_id") if isinstance(record, dict) else None
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return where
    raw_id = str(raw_id)
    return raw_id if raw_id.strip() and _is_utf8(raw_id) else where


class Ingest(Stage):
    name: ClassVar[str] = "ingest"
    config_cls: ClassVar[type] = IngestConfig
    input_columns: ClassVar[tuple[str, ...]] = ()
    output_columns: ClassVar[tuple[str, ...]] = tuple(OUTPUT_SCHEMA.names)
    # Dedup keeps the first occurrence, so shards commit in corpus order.
    ordered_commit: ClassVar[bool] = True
    dedup: ClassVar[DedupRule] = DedupRule(("content_hash", "doc_id"), "filter:duplicate_text",
                                           "error:duplicate_doc_id")

    def input_identity(self) -> dict:
        from pipeline.io.corpus import files_identity

        return files_identity(self.config.path, self.config.identity)

    def changed_reads(self, read: list[dict]) -> list[str]:
        from pipeline.io.corpus import changed_reads, corpus_root

        return changed_reads(read, corpus_root(self.config.path))

    def plan(self, ctx, upstream):
        cfg = self.config
        return plan_corpus(cfg.path, cfg.columns, cfg.resources.shard_rows, cfg.shard_mb * 2**20)

    def readers(self) -> dict:
        return {"jsonl": read_jsonl_shard, "parquet_corpus": read_parquet_corpus_shard}

    def task_steps(self) -> list[BlockStep]:
        from pipeline.config import to_dict
        from pipeline.io.corpus import corpus_root

        return [BlockStep(ingest_batch, {"cfg": to_dict(self.config), "run_uri": self.context.run_uri,
                                         "root": corpus_root(self.config.path)})]

    def dedup_keys(self, kept: pa.Table) -> np.ndarray:
        """Only what dedup needs reaches the driver: each kept row's content hash and doc_id, as keys."""
        return row_keys(hex_keys(kept["content_hash"].to_pylist()), text_keys(kept["doc_id"].to_pylist()))
