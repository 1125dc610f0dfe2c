"""Corpus reading for ingest: find the files, plan shards, read a shard's raw records.

JSONL shards are byte ranges planned by one streaming scan (so reading a shard never rereads the
file from the top); Parquet shards are row ranges. Whole-file problems (unreadable, unsupported
type, wrong column types, no rows) stop the run before any work with the file and column named;
per-record problems (bad UTF-8, bad JSON) come back as records that ingest rejects.
"""

from __future__ import annotations

import errno
import glob
import json
import math
import os
import stat
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import StageInputError
from pipeline.io.shards import ShardSpec
from pipeline.logging import get_logger
from pipeline.stage import INTERNAL

log = get_logger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet",)
_STRING = (pa.types.is_string, pa.types.is_large_string)
# Columns the readers and the runner add to a shard's table; a corpus column of that name would clash.
RESERVED_COLUMNS = ("_raw", "_where", "_base", *INTERNAL)


@dataclass(frozen=True)
class CorpusColumns:
    """Names of the corpus columns, for corpora that call them something else."""

    doc_id: str = "doc_id"
    text: str = "text"
    title: str = "title"
    image: str = "image"
    image_url: str = "image_url"
    domain: str = "domain"

    def mapping(self) -> dict[str, str]:
        return {canon: getattr(self, canon) for canon in self.__dataclass_fields__}


class RecordError:
    """A record that could not even be parsed; ingest rejects it with `reason`."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def get(self, key, default=None):
        return default


def find_files(path: str) -> list[str]:
    path = os.path.expanduser(path)
    if any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path, recursive=True))
    elif os.path.isdir(path):
        files = sorted(
            os.path.join(root, f)
            for root, _, names in os.walk(path)
            for f in names
            if f.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES) and not f.startswith(".")
        )
    elif os.path.exists(path):
        files = [path]
    else:
        raise StageInputError(f"ingest: `ingest.path` {path!r} does not exist")
    files = [os.path.abspath(f) for f in files if os.path.isfile(f)]
    if not files:
        raise StageInputError(f"ingest: no .jsonl/.json/.parquet files found under {path!r}")
    return files


def plan_corpus(path: str, columns: CorpusColumns, shard_rows: int, shard_bytes: int | None = None) -> list[ShardSpec]:
    """Shards of `shard_rows` records, ended early once a shard holds `shard_bytes` of input (a Parquet
    corpus with images inline: a task holds its whole shard, so rows alone would let 2,000 5-MB images
    make one 10-GB task). Bytes are the file's own (JSONL) or the row groups' uncompressed sizes spread
    evenly over their rows (Parquet; a single row group larger than the cap is still read whole)."""
    specs: list[ShardSpec] = []
    cap = shard_bytes or float("inf")
    for file in find_files(path):
        if file.endswith(PARQUET_SUFFIXES):
            specs += _plan_parquet(file, columns, shard_rows, cap, len(specs))
        elif file.endswith(JSONL_SUFFIXES):
            specs += _plan_jsonl(file, shard_rows, cap, len(specs))
        else:
            raise StageInputError(f"ingest: unsupported file type {file!r} (use .jsonl, .json or .parquet)")
    if not specs:
        raise StageInputError(f"ingest: the input {path!r} holds no records (all files are empty)")
    return specs


def _plan_jsonl(file: str, shard_rows: int, cap: float, first_index: int) -> list[ShardSpec]:
    specs: list[ShardSpec] = []
    try:
        with open(file, "rb") as f:
            start, offset, count, first_line = 0, 0, 0, 1
            for line_no, line in enumerate(f, start=1):
                if count == 0:
                    start, first_line = offset, line_no
                offset += len(line)
                if line.strip():
                    count += 1
                if count == shard_rows or (count and offset - start >= cap):
                    specs.append(_jsonl_spec(first_index + len(specs), file, start, offset, count, first_line))
                    count = 0
            if count:
                specs.append(_jsonl_spec(first_index + len(specs), file, start, offset, count, first_line))
    except OSError as exc:
        raise StageInputError(f"ingest: cannot read {file}: {exc.strerror or exc}") from None
    return specs


def _jsonl_spec(index: int, file: str, start: int, stop: int, rows: int, first_line: int) -> ShardSpec:
    return ShardSpec(f"{index:06d}", file, start, stop, rows, kind="jsonl", first_line=first_line)


def _plan_parquet(file: str, columns: CorpusColumns, shard_rows: int, cap: float, first_index: int) -> list[ShardSpec]:
    try:
        meta = pq.ParquetFile(file)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError or ArrowInvalid for junk files
        raise StageInputError(f"ingest: cannot read Parquet file {file}: {exc}") from None
    check_parquet_schema(meta.schema_arrow, columns, file)
    return [ShardSpec(f"{first_index + i:06d}", file, start, start + rows, rows, "parquet_corpus")
            for i, (start, rows) in enumerate(parquet_ranges(meta.metadata, shard_rows, cap))]


def parquet_ranges(meta: pq.FileMetaData, shard_rows: int, cap: float) -> list[tuple[int, int]]:
    """(first row, rows) of consecutive shards covering a Parquet file: `shard_rows` rows each, ended
    early once a shard holds `cap` bytes (each row group's uncompressed size spread evenly over its
    rows; a shard always takes at least one row)."""
    ranges: list[tuple[int, int]] = []
    start, count, size = 0, 0, 0.0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        per_row, left = group.total_byte_size / max(1, group.num_rows), group.num_rows
        while left:
            # Rows this shard still takes from the group: up to shard_rows, or until it reaches the cap.
            by_bytes = max(1, math.ceil((cap - size) / per_row)) if per_row and cap != math.inf else left
            take = min(left, shard_rows - count, by_bytes)
            count, size, left = count + take, size + take * per_row, left - take
            if count == shard_rows or size >= cap:
                ranges.append((start, count))
                start, count, size = start + count, 0, 0.0
    if count:
        ranges.append((start, count))
    return ranges


def check_parquet_schema(schema: pa.Schema, columns: CorpusColumns, file: str) -> None:
    """Whole-column type errors are caught here, before any work, naming the column and the file."""
    names = schema.names
    if columns.text not in names:
        raise StageInputError(f"ingest: {file} has no text column {columns.text!r}; its columns: {', '.join(names)}")
    expected = {
        "text": ("a string", _STRING),
        "doc_id": ("a string or integer", _STRING + (pa.types.is_integer,)),
        "title": ("a string", _STRING),
        "domain": ("a string", _STRING),
        "image_url": ("a string", _STRING),
        "image": ("binary, a path string or an image struct {bytes, path}",
                  _STRING + (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_struct)),
    }
    for canon, (what, tests) in expected.items():
        name = getattr(columns, canon)
        if name in RESERVED_COLUMNS:
            raise StageInputError(
                f"ingest: `ingest.columns.{canon}` is {name!r}, a name fusegen uses internally; "
                "rename that column in the corpus"
            )
        if names.count(name) > 1:
            raise StageInputError(
                f"ingest: column {name!r} appears {names.count(name)} times in {file}; keep one of them"
            )
        if name in names:
            tp = schema.field(name).type
            # A dictionary-encoded column (a pandas category) reads back as its values.
            value_tp = tp.value_type if pa.types.is_dictionary(tp) else tp
            if not any(t(value_tp) for t in tests) and not pa.types.is_null(value_tp):
                raise StageInputError(f"ingest: column {name!r} in {file} must be {what}, but its type is {tp}")


def read_jsonl_shard(spec: ShardSpec, fs) -> pa.Table:
    with open(spec.source, "rb") as f:
        f.seek(spec.start)
        data = f.read(spec.stop - spec.start)
    name = os.path.basename(spec.source)
    raws, wheres = [], []
    # Blank lines are skipped by the same test the planner counts rows with, so a shard reads back
    # exactly spec.rows records (a byte order mark is dropped when the line is parsed).
    for i, line in enumerate(data.split(b"\n")):
        if line.strip():
            raws.append(line.rstrip(b"\r"))
            wheres.append(f"{name}:{spec.first_line + i}")
    base = os.path.dirname(spec.source)
    return pa.table({"_raw": pa.array(raws, pa.binary()), "_where": wheres, "_base": [base] * len(raws)})


def read_parquet_corpus_shard(spec: ShardSpec, fs) -> pa.Table:
    from pipeline.io.shards import read_row_range

    table = read_row_range(spec.source, spec.start, spec.stop)
    # Unmapped columns named like the internal ones would clash with them; ingest does not read them.
    table = table.select([i for i, c in enumerate(table.column_names) if c not in RESERVED_COLUMNS])
    name = os.path.basename(spec.source)
    wheres = [f"{name}#row{spec.start + i}" for i in range(table.num_rows)]
    table = table.append_column("_where", pa.array(wheres, pa.string()))
    return table.append_column("_base", pa.array([os.path.dirname(spec.source)] * table.num_rows, pa.string()))


def iter_records(table: pa.Table, columns: CorpusColumns):
    """Yield (record dict or RecordError, where, base dir) with canonical keys."""
    mapping = columns.mapping()
    wheres, bases = table["_where"].to_pylist(), table["_base"].to_pylist()
    if "_raw" in table.column_names:
        for raw, where, base in zip(table["_raw"].to_pylist(), wheres, bases):
            yield _parse_line(raw, mapping), where, base
        return
    present = {canon: src for canon, src in mapping.items() if src in table.column_names}
    data = {canon: _column_values(table[src]) for canon, src in present.items()}
    for i, (where, base) in enumerate(zip(wheres, bases)):
        record = {canon: values[i] for canon, values in data.items()}
        if any(v is _INVALID_UTF8 for v in record.values()):
            yield RecordError("error:invalid_utf8"), where, base
        else:
            yield record, where, base


_INVALID_UTF8 = object()


def _column_values(column: pa.ChunkedArray) -> list:
    """A column as Python values; a string that is not UTF-8 becomes `_INVALID_UTF8`, not an exception.

    Parquet readers do not check UTF-8, so a file from a lax writer fails only when a value is turned into
    a Python string, and one bad value must cost its row, not the shard.
    """
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        values = []
        for chunk in column.chunks:
            for i in range(len(chunk)):
                try:
                    values.append(chunk[i].as_py())
                except UnicodeDecodeError:
                    values.append(_INVALID_UTF8)
        return values


def _parse_line(raw: bytes, mapping: dict[str, str]):
    try:
        # utf-8-sig: a byte order mark opening a line (a Windows editor's file, also mid-file after `cat`) is
        # not data.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return RecordError("error:invalid_utf8")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        # ValueError: bad JSON, or an integer over Python's 4300-digit limit; RecursionError: deep nesting.
        return RecordError("error:invalid_json")
    if not isinstance(obj, dict):
        return RecordError("error:not_an_object")
    return {canon: obj.get(src) for canon, src in mapping.items()}


class RecordReject(Exception):
    """One input record becomes a reject row with `reason` (`error:<kind>`); the run goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_local_image(base_dir: str, path: str, max_bytes: int) -> bytes:
    """Read a local image; a bad path or file is a reject (`error:image_*`), never a crash, a hang or an
    OOM; a failing read is retried, then raises ImageReadError (the shard fails, resume redoes it).

    Paths are relative to the corpus file's folder; absolute paths are allowed. Only a regular file is
    opened (a directory, FIFO or device such as /dev/zero is `image_not_a_file`), its size is checked
    before reading, and at most max_bytes + 1 bytes are read (a file that grew, or a /proc file that
    reports size 0, cannot exhaust memory).
    """
    from pipeline.io.images import read_with_retries

    full = path if os.path.isabs(path) else os.path.join(base_dir, path)

    def read() -> bytes:
        try:
            info = os.stat(full)
        except OSError as exc:
            # A name too long or a symlink loop: the record's path is bad, no retry changes that.
            if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
                raise RecordReject("error:image_unreadable") from None
            raise
        if not stat.S_ISREG(info.st_mode):
            raise RecordReject("error:image_not_a_file")
        if info.st_size > max_bytes:
            raise RecordReject("error:image_too_large")
        # O_NONBLOCK: should the path become a FIFO after the check, open() must not wait for a writer.
        with os.fdopen(os.open(full, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise RecordReject("error:image_not_a_file")
            return f.read(max_bytes + 1)

    try:
        # Any other OSError (EIO, a stale NFS handle, a throttled mount) is the storage failing, not the
        # record: retried, then ImageReadError fails the shard for resume (R35).
        data = read_with_retries(read, full)
    except FileNotFoundError:
        raise RecordReject("error:image_missing") from None
    except ValueError:
        # os.stat refuses an embedded NUL; ingest checks paths first, this covers other callers.
        raise RecordReject("error:nul_byte") from None
    except NotADirectoryError:
        # A path through a file (`a.png/inner.png`): the record names no file that can exist.
        raise RecordReject("error:image_unreadable") from None
    if len(data) > max_bytes:
        raise RecordReject("error:image_too_large")
    return data


def corpus_root(path: str) -> str:
    """The folder the corpus files have in common: the local images records name are recorded relative
    to it, so the same corpus and images in another folder keep their identity."""
    return os.path.commonpath([os.path.dirname(f) for f in find_files(path)])


def read_entry(root: str | None, base_dir: str, path: str, mode: str, data: bytes | None) -> dict:
    """The identity of one local image a record names, taken by the worker that read it: its path
    (relative to the corpus root `root`, or to the record's folder without one; absolute when the record
    gave it so), its size and the SHA-256 of the bytes read (`hash`, `auto`; the mtime is kept too, so a
    later check hashes only a file whose mtime moved) or its mtime (`stat`). A file that was not read
    (`data` None: too large, not a regular file) is identified by size and mtime, a missing one as
    `missing` (it appearing later changes the identity too)."""
    import hashlib

    full = path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))
    name = path if os.path.isabs(path) else os.path.relpath(full, root or base_dir)
    try:
        st = os.stat(full)
    except FileNotFoundError:
        return {"path": name, "missing": True}
    except (OSError, ValueError):
        return {"path": name, "unreadable": True}
    entry = {"path": name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if data is not None and mode != "stat":
        entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    return entry


def changed_reads(entries: list[dict], root: str) -> list[str]:
    """The recorded local images (`read_entry`, paths relative to `root`) that differ now: edited,
    removed, or there now where they were missing. A file whose size and mtime are as recorded is not
    read again; one whose mtime moved is hashed and compared (a copy with new mtimes is unchanged)."""
    changed = []
    for entry in entries:
        path = entry["path"]
        full = path if os.path.isabs(path) else os.path.normpath(os.path.join(root, path))
        try:
            st = os.stat(full)
        except FileNotFoundError:
            if not entry.get("missing"):
                changed.append(f"{path} (removed)")
            continue
        except (OSError, ValueError):
            if not entry.get("unreadable"):
                changed.append(path)
            continue
        was_there = not (entry.get("missing") or entry.get("unreadable")) and st.st_size == entry["size"]
        same = was_there and (st.st_mtime_ns == entry["mtime_ns"]
                                   or ("sha256" in entry and _sha256(full) == entry["sha256"]))
        if not same:
            changed.append(path)
    return changed


def _sha256(file: str) -> str | None:
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


# Corpora up to this size are identified by content hash with `identity: auto` (~1-2 s per GiB).
HASH_LIMIT = 2 * 1024**3


def files_identity(path: str, mode: str = "auto") -> dict:
    """The corpus files' identity for the fingerprint: path relative to their common folder, size, and
    the SHA-256 of the contents (`hash`) or the modification time (`stat`); `auto` picks by total size.
    The local images the records name are not walked for here: ingest's workers record the ones they
    read (`read_entry`) and the runner checks those again (`changed_reads`), so a file beside the corpus
    that no record names changes nothing; which images are named is in the corpus files themselves."""
    return {"files": file_entries(find_files(path), mode)}


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
# Up to this many local images are listed one by one (a re-run names the edited ones); beyond, a digest.
LISTED_IMAGES = 1000
# A walk stops here: the corpus sits in a folder that is not a corpus's own (a home directory...).
MAX_WALKED = 1_000_000


def local_images_identity(corpus_files: list[str], exclude: tuple[str, ...] = (), mode: str = "auto") -> dict:
    """Size and content hash (`hash`, and `auto` up to HASH_LIMIT in all) or modification time (`stat`)
    of every image file under the corpus files' folders: an image edited in place re-runs ingest like an
    edited corpus file, and the same images copied elsewhere (`ray job submit --working-dir` unpacks a
    fresh copy, new mtimes, for every change of the working dir) do not. Hidden entries, run dirs (a
    `run.yaml`), stage folders (a `_manifest.json`) and `exclude` are skipped, so a run dir kept beside
    the corpus does not identify its own image store. Images named by absolute paths elsewhere are not
    covered."""
    import hashlib

    if not corpus_files:
        return {}
    root = os.path.commonpath([os.path.dirname(f) for f in corpus_files])
    skip = {os.path.abspath(os.path.expanduser(e)) for e in exclude if e and "://" not in e}
    found, walked = [], 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".") and os.path.join(folder, d) not in skip
            and not os.path.exists(os.path.join(folder, d, "run.yaml"))
            and not os.path.exists(os.path.join(folder, d, "_manifest.json"))
        )
        for name in sorted(names):
            walked += 1
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            full = os.path.join(folder, name)
            try:
                found.append((full, os.stat(full)))
            except OSError:
                continue  # gone or unreadable: the record that names it becomes a reject
        if walked >= MAX_WALKED:
            log.warning("ingest: stopped identifying local images after %d files under %s; edits to the "
                        "rest will not re-run ingest", walked, root)
            break
    if not found:
        return {}
    use_hash = mode == "hash" or (mode == "auto" and sum(st.st_size for _, st in found) <= HASH_LIMIT)
    entries = [_entry(full, root, st, use_hash) for full, st in found]
    if len(entries) <= LISTED_IMAGES:
        return {"files": entries}
    digest = hashlib.sha256()
    for e in entries:
        digest.update(f"{e['path']}\0{e['size']}\0{e.get('sha256') or e.get('mtime_ns')}\n".encode())
    return {"count": len(entries), "sha256": digest.hexdigest()}


def file_entries(files: list[str], mode: str = "auto") -> list[dict]:
    """Per file: its path relative to the files' common folder, its size, and the SHA-256 of its
    contents (`hash`) or its modification time (`stat`); `auto` hashes up to HASH_LIMIT in all."""

    if not files:
        return []
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    stats = [os.stat(f) for f in files]
    use_hash = mode == "hash" or (mode == "auto" and sum(s.st_size for s in stats) <= HASH_LIMIT)
    return [_entry(file, root, st, use_hash) for file, st in zip(files, stats)]


def _entry(file: str, root: str, st: os.stat_result, use_hash: bool) -> dict:
    """A file by size and the SHA-256 of its contents, or (`use_hash` false) by size and mtime."""
    import hashlib

    if not use_hash:
        return _file_entry(file, root, st)
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": os.path.relpath(file, root), "size": st.st_size, "sha256": digest.hexdigest()}


def _file_entry(file: str, root: str, st: os.stat_result) -> dict:
    """A file identified by size and modification time (the entry `inputs_diff` compares)."""
    return {"path": os.path.relpath(file, root), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
