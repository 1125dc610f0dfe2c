"""The run's content-addressed image store: every image stored once, referenced everywhere else.

`RUN_DIR/_images/<aa>/<sha256>.<ext>`, one file per image, keyed by the SHA-256 of the normalised
bytes (what `io/images.normalise_image` returns). Between stages an image column holds only a
reference struct `{sha256, width, height, format}` (IMAGE_REF); a worker that needs pixels loads
them by reference. Storing is idempotent: the same bytes map to the same name, a file that exists
is not written again, and a write goes to a temporary name first, so a crash leaves no half image
and a re-run adds no duplicate.

Files, not packed Parquet shards: a reference then resolves to one path (no per-image offset table
to keep consistent with crashes), workers on different nodes store in parallel without a shared
writer, and a re-run dedups by name alone. bench/image_store.py measures both layouts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.io.fs import RunFS
from pipeline.io.images import ReadRetry, read_with_retries

STORE_DIR = "_images"
IMAGE_REF = pa.struct(
    [("sha256", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string())]
)
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif"}


def is_image_ref(tp: pa.DataType) -> bool:
    return pa.types.is_struct(tp) and tp.equals(IMAGE_REF)


def is_image_ref_list(tp: pa.DataType) -> bool:
    return (pa.types.is_list(tp) or pa.types.is_large_list(tp)) and is_image_ref(tp.value_type)


def image_ref(data: bytes, fmt: str, width: int, height: int) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "width": int(width), "height": int(height), "format": fmt}


def file_name(ref: dict) -> str:
    """The image's name in an export: content hash plus extension (stable across runs)."""
    return f"{ref['sha256'][:32]}.{_EXT.get(ref['format'], ref['format'])}"


@dataclass(frozen=True)
class ImageStore:
    run_fs: RunFS
    # How a failing read is retried before it fails the shard (None: io/images.READ_RETRY).
    retry: ReadRetry | None = None

    @classmethod
    def from_uri(cls, run_uri: str) -> ImageStore:
        return cls(RunFS.from_uri(run_uri))

    def rel(self, ref: dict) -> str:
        sha = ref["sha256"]
        return f"{STORE_DIR}/{sha[:2]}/{sha}.{_EXT.get(ref['format'], ref['format'])}"

    def put(self, data: bytes, fmt: str, width: int, height: int) -> dict:
        """Store normalised image bytes (once) and return their reference."""
        ref = image_ref(data, fmt, width, height)
        rel = self.rel(ref)
        if not self.run_fs.exists(rel):
            self.run_fs.write_bytes(rel, data)
        return ref

    def put_fitted(self, image) -> dict:
        """`put` for an `io/images.FittedImage` (what validation returns)."""
        return self.put(image.data, image.format, image.width, image.height)

    def get(self, ref: dict) -> bytes:
        """The stored bytes; a failing read is retried (io/images.read_with_retries), then raises
        ImageReadError; a missing file raises FileNotFoundError. Neither is ever a verdict on the row."""
        rel = self.rel(ref)
        return read_with_retries(lambda: self.run_fs.read_bytes(rel), rel, self.retry)

    def exists(self, ref: dict) -> bool:
        return self.run_fs.exists(self.rel(ref))

    def hf_struct(self, ref: dict | None) -> dict | None:
        """An HF `datasets` image struct `{bytes, path}` for a reference (None stays None)."""
        if ref is None:
            return None
        return {"bytes": self.get(ref), "path": file_name(ref)}

    def listing(self) -> dict[str, int]:
        """sha256 -> size of every stored image (tests and `fusegen status` use it)."""
        root = self.run_fs.path(STORE_DIR)
        if not self.run_fs.exists(STORE_DIR):
            return {}
        infos = self.run_fs.fs.get_file_info(pafs.FileSelector(root, recursive=True))
        return {
            i.base_name.split(".")[0]: i.size
            for i in infos
            if i.type == pafs.FileType.File and not i.base_name.startswith(".")
        }


@dataclass(frozen=True)
class StoreGarbage:
    files: list[str]  # paths relative to the run dir
    bytes: int


def referenced_images(run_fs: RunFS) -> set[str]:
    """SHA-256 of every image a Parquet file of the run refers to: stage parts, rejects and index parts,
    committed or not (a folder an earlier, longer stage list left keeps its images)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shas: set[str] = set()
    infos = run_fs.fs.get_file_info(pafs.FileSelector(run_fs.root, recursive=True))
    for info in infos:
        rel = info.path[len(run_fs.root) + 1 :]
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet") or rel.startswith(f"{STORE_DIR}/"):
            continue
        schema = pq.read_schema(info.path, filesystem=run_fs.fs)
        columns = [f.name for f in schema if is_image_ref(f.type) or is_image_ref_list(f.type)]
        if not columns:
            continue
        table = pq.read_table(info.path, columns=columns, filesystem=run_fs.fs)
        for name in columns:
            column = table[name]
            if is_image_ref_list(column.type):
                column = pc.list_flatten(column)
            shas.update(s for s in pc.struct_field(column, "sha256").to_pylist() if s is not None)
    return shas


def store_garbage(run_fs: RunFS) -> StoreGarbage:
    """Stored images no Parquet file of the run refers to (an ingest row that dedup dropped, a stage
    re-run that made other images), and temporaries of writes that never finished."""
    root = run_fs.path(STORE_DIR)
    if not run_fs.exists(STORE_DIR):
        return StoreGarbage([], 0)
    live = referenced_images(run_fs)
    files, size = [], 0
    for info in run_fs.fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        if info.base_name.startswith(".") or info.base_name.split(".")[0] not in live:
            files.append(info.path[len(run_fs.root) + 1 :])
            size += info.size or 0
    return StoreGarbage(sorted(files), size)


def collect_store_garbage(run_fs: RunFS) -> StoreGarbage:
    """Delete `store_garbage`. Only while no run writes to this run dir (the runner calls it once a run
    has finished every stage; `fusegen gc` on a run dir nothing else uses)."""
    garbage = store_garbage(run_fs)
    for rel in garbage.files:
        run_fs.delete_file(rel)
    return garbage
