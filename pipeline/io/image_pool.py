"""The image pool: an image source the images stage retrieves from, read into the image store.

`images.pool.path` names a folder of image files (an optional `<stem>.txt` beside an image is its
caption), or a JSONL / Parquet table (a file, folder or glob) whose rows carry an image as a local path
(relative to the table's folder), bytes or an HF image struct, or a URL, plus optional `caption`,
`license` and `id` columns (names configurable). Each pool row becomes (pool id, stored image
reference, caption, license, origin) or a reject with its reason: a broken image, a refused URL and a
missing file cost their row, never the index. The pool's files (the table and the local images beside
it, or every image of a folder and its caption) enter the pool's identity, so an edited pool rebuilds
the images stage's pool index, or re-runs the MegaPairs `pool` stage (pipeline/stages/mp_pool.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import check
from pipeline.errors import StageInputError
from pipeline.io.fetch_config import FetchConfig
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.io.images import ImageError, ImageLimits, fit_image
from pipeline.io.shards import ShardSpec
from pipeline.logging import get_logger

log = get_logger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")
TABLE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")
POOL_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("image", IMAGE_REF),
    ("caption", pa.string()),
    ("license", pa.string()),
    ("origin", pa.string()),
])


@dataclass(frozen=True)
class PoolColumns:
    id: str = "id"
    image: str = "image"
    image_url: str = "image_url"
    caption: str = "caption"
    license: str = "license"


@dataclass(frozen=True)
class PoolConfig:
    # A folder of images, or a JSONL/Parquet table (file, folder or glob); null = no pool.
    path: str | None = None
    columns: PoolColumns = dataclasses.field(default_factory=PoolColumns)
    # License recorded for pool images whose row names none (a folder pool has no license column).
    default_license: str | None = None
    identity: Literal["auto", "hash", "stat"] = "auto"
    shard_rows: int = 256
    # A JSONL/Parquet pool shard also ends once it holds this many MB of input (images inline), as
    # ingest's `shard_mb` does.
    shard_mb: int = 512

    def __post_init__(self) -> None:
        check(self.path is None or bool(str(self.path).strip()), "images.pool", "path", "must be a path or null")
        check(self.shard_rows >= 1, "images.pool", "shard_rows", "must be >= 1")
        check(self.shard_mb >= 1, "images.pool", "shard_mb", "must be >= 1")


def pool_files(path: str, key: str = "images.pool") -> tuple[str, list[str]]:
    """('images', image files) for a folder of images, else ('table', JSONL/Parquet files); `key`: the
    pool's config section (`images.pool`, or `pool` in the MegaPairs track), for messages."""
    import glob

    full = os.path.expanduser(path)
    if any(ch in full for ch in "*?["):
        files = sorted(f for f in glob.glob(full, recursive=True) if os.path.isfile(f))
    elif os.path.isdir(full):
        files = sorted(os.path.join(root, f) for root, _, names in os.walk(full) for f in names
                       if not f.startswith("."))
    elif os.path.isfile(full):
        files = [full]
    else:
        raise StageInputError(f"{key.partition('.')[0]}: `{key}.path` {path!r} does not exist")
    files = [os.path.abspath(f) for f in files]
    tables = [f for f in files if f.lower().endswith(TABLE_SUFFIXES)]
    if tables:
        return "table", tables
    return "images", [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]


def pool_identity(cfg: PoolConfig, key: str = "images.pool", exclude: tuple[str, ...] = ()) -> dict:
    """The pool's files (names, sizes, hashes or mtimes) for the pool's identity: the images of a
    folder and their sidecar captions, or the tables and the local images beside them (an image edited
    in place counts; `exclude`: folders to leave out, a run's own)."""
    from pipeline.io.corpus import file_entries, local_images_identity

    kind, files = pool_files(cfg.path, key)
    out = {"kind": kind, "files": file_entries(files, cfg.identity), "columns": dataclasses.asdict(cfg.columns),
           "default_license": cfg.default_license}
    if kind == "images":
        captions = [c for c in (os.path.splitext(f)[0] + ".txt" for f in files) if os.path.isfile(c)]
        if captions:
            out["captions"] = file_entries(captions, cfg.identity)
    else:
        images = local_images_identity(files, exclude, cfg.identity)
        if images:
            out["images"] = images
    return out


def plan_pool(cfg: PoolConfig, key: str = "images.pool") -> list[ShardSpec]:
    from pipeline.io.corpus import _plan_jsonl, parquet_ranges

    kind, files = pool_files(cfg.path, key)
    stage, n, cap = key.partition(".")[0], cfg.shard_rows, cfg.shard_mb * 2**20
    if kind == "images":
        if not files:  # not an error: retrieval fails over (`retrieval:empty_pool`), mp_pool has 0 rows
            log.warning("%s: the pool %r holds no images (%s) and no JSONL/Parquet table; nothing to read",
                        stage, cfg.path, ", ".join(IMAGE_SUFFIXES))
        listing = json.dumps(files)
        return [ShardSpec(f"{i:06d}", listing, s, min(len(files), s + n), min(len(files), s + n) - s, "pool_images")
                for i, s in enumerate(range(0, len(files), n))]
    specs: list[ShardSpec] = []
    for file in files:
        if file.endswith(".parquet"):
            try:
                meta = pq.ParquetFile(file).metadata
            except Exception as exc:  # noqa: BLE001 - junk files raise OSError or ArrowInvalid
                raise StageInputError(f"{stage}: cannot read the pool's Parquet file {file}: {exc}") from None
            specs += [ShardSpec(f"{len(specs) + i:06d}", file, start, start + rows, rows, "pool_parquet")
                      for i, (start, rows) in enumerate(parquet_ranges(meta, n, cap))]
        else:
            specs += [dataclasses.replace(s, kind="pool_jsonl") for s in _plan_jsonl(file, n, cap, len(specs))]
    if not specs:
        log.warning("%s: the pool %r holds no rows; nothing to read", stage, cfg.path)
    return specs


def read_pool_images(spec: ShardSpec, fs) -> pa.Table:
    files = json.loads(spec.source)[spec.start : spec.stop]
    root = os.path.commonpath([os.path.dirname(f) for f in json.loads(spec.source)])
    records, wheres = [], []
    for f in files:
        caption = None
        side = os.path.splitext(f)[0] + ".txt"
        if os.path.isfile(side):
            with open(side, "rb") as fh:
                caption = fh.read(4096).decode("utf-8", "replace").strip() or None
        # Relative to the pool folder (`_base`): the id and the origin name the file, not this machine.
        rel = os.path.relpath(f, root)
        records.append(json.dumps({"id": rel, "image": rel, "caption": caption}))
        wheres.append(rel)
    return pa.table({"_raw": pa.array([r.encode() for r in records], pa.binary()),
                     "_where": wheres, "_base": [root] * len(files)})


def read_pool_jsonl(spec: ShardSpec, fs) -> pa.Table:
    from pipeline.io.corpus import read_jsonl_shard

    return read_jsonl_shard(spec, fs)


def read_pool_parquet(spec: ShardSpec, fs) -> pa.Table:
    from pipeline.io.shards import read_row_range

    table = read_row_range(spec.source, spec.start, spec.stop)
    records = []
    for row in table.to_pylist():
        records.append(json.dumps({k: _jsonable(v) for k, v in row.items()}).encode())
    name = os.path.basename(spec.source)
    return pa.table({"_raw": pa.array(records, pa.binary()),
                     "_where": [f"{name}#row{spec.start + i}" for i in range(table.num_rows)],
                     "_base": [os.path.dirname(spec.source)] * table.num_rows})


def _jsonable(value: Any) -> Any:
    """Image bytes travel through the record JSON as latin-1 text with a marker."""
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": bytes(value).decode("latin-1")}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _unjson(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__bytes__"}:
        return value["__bytes__"].encode("latin-1")
    if isinstance(value, dict):
        return {k: _unjson(v) for k, v in value.items()}
    return value


POOL_READERS = {"pool_images": read_pool_images, "pool_jsonl": read_pool_jsonl, "pool_parquet": read_pool_parquet}


class PoolRowError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def pool_record(raw: bytes, cfg: PoolConfig) -> dict:
    """A raw pool line -> {id, image, image_url, caption, license} (PoolRowError for bad records)."""
    try:
        obj = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PoolRowError("error:invalid_json") from None
    if not isinstance(obj, dict):
        raise PoolRowError("error:not_an_object")
    c = cfg.columns
    out = {"id": obj.get(c.id), "image": _unjson(obj.get(c.image)), "image_url": obj.get(c.image_url),
           "caption": obj.get(c.caption), "license": obj.get(c.license)}
    for key in ("caption", "license", "image_url"):
        if out[key] is not None and not isinstance(out[key], str):
            raise PoolRowError(f"error:wrong_type:{key}")
    if out["id"] is not None and (isinstance(out["id"], bool) or not isinstance(out["id"], (str, int))):
        raise PoolRowError("error:wrong_type:id")
    if out["image"] is not None and not isinstance(out["image"], (str, bytes, bytearray, dict)):
        raise PoolRowError("error:wrong_type:image")
    return out


def load_pool_batch(table: pa.Table, cfg: dict, fetch: dict, store_uri: str, resolver=None) -> pa.Table:
    """Ray Data task: raw pool records -> pool images (POOL_SCHEMA) with status and reason, stored in
    the image store at `store_uri` (the index dir's for the images stage, the run's for MegaPairs)."""
    from pipeline.config import build
    from pipeline.io.corpus import load_local_image
    from pipeline.stage import OK, REJECTED, set_status

    config = build(PoolConfig, cfg, "images.pool", {})
    fetch_cfg = build(FetchConfig, fetch, "images.fetch", {})
    store = ImageStore.from_uri(store_uri)
    rows, statuses, reasons = [], [], []
    fetchers: list = []

    def get_fetcher():
        # One fetcher (one connection pool) per block, made only when a row has a URL.
        if not fetchers:
            fetchers.append(_new_fetcher(fetch_cfg, resolver))
        return fetchers[0]

    try:
        for raw, where, base in zip(table["_raw"].to_pylist(), table["_where"].to_pylist(), table["_base"].to_pylist()):
            row = {"id": where, "image": None, "caption": None, "license": None, "origin": where}
            try:
                rec = pool_record(raw, config)
                row["id"] = str(rec["id"]) if rec["id"] is not None and str(rec["id"]).strip() else where
                row["caption"] = (rec["caption"] or "").strip() or None
                row["license"] = rec["license"] or config.default_license
                data, origin = _pool_bytes(rec, base, fetch_cfg, load_local_image, get_fetcher)
                row["origin"] = origin
                fitted = fit_image(data, ImageLimits(fetch_cfg.max_bytes, fetch_cfg.max_pixels, fetch_cfg.min_side),
                                   fetch_cfg.max_side, fetch_cfg.max_aspect, fetch_cfg.jpeg_quality)
                row["image"] = store.put(fitted.data, fitted.format, fitted.width, fitted.height)
                statuses.append(OK)
                reasons.append("")
            except PoolRowError as exc:
                statuses.append(REJECTED)
                reasons.append(exc.reason)
            except ImageError as exc:
                statuses.append(REJECTED)
                reasons.append(f"error:image_{exc.kind}")
            rows.append(row)
    finally:
        for fetcher in fetchers:
            fetcher.close()
    out = pa.Table.from_pylist(rows, schema=POOL_SCHEMA)
    for name in ("_shard", "_src", "_parent"):
        out = out.append_column(name, table[name])
    return set_status(out, statuses, reasons)


def _new_fetcher(cfg: FetchConfig, resolver):
    from pipeline.io.fetch import Fetcher

    return Fetcher(cfg) if resolver is None else Fetcher(cfg, resolver=resolver)


def _pool_bytes(rec: dict, base: str, fetch_cfg: FetchConfig, load_local, get_fetcher) -> tuple[bytes, str]:
    from pipeline.io.corpus import RecordReject

    image = rec.get("image")
    try:
        if isinstance(image, dict):
            data, path = image.get("bytes"), image.get("path")
            if isinstance(data, (bytes, bytearray)) and data:
                return bytes(data), path or "bytes"
            image = path
        if isinstance(image, (bytes, bytearray)):
            return bytes(image), "bytes"
        if isinstance(image, str) and image:
            if "\x00" in image:
                raise PoolRowError("error:nul_byte")
            return load_local(base, image, fetch_cfg.max_bytes), image
    except RecordReject as rej:
        raise PoolRowError(rej.reason) from None
    url = rec.get("image_url")
    if url:
        result = get_fetcher().fetch(url)
        if not result.ok:
            raise PoolRowError(result.error)
        return result.data, result.url
    raise PoolRowError("error:no_image")
