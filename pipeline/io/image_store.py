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
    files: list[str]  # paths relative to the run dir (the first `keep` of them, in path order)
    bytes: int
    count: int = 0  # every garbage file, `files` kept or not


# sha256 hex digits: the store's folders are the first two (`_images/<aa>/`), 256 of them.
_SHA_LEN = 64


def _spill_references(run_fs: RunFS, spill_dir: str) -> None:
    """Every image reference of every Parquet file of the run (stage parts, rejects and index parts,
    committed or not: a folder an earlier, longer stage list left keeps its images), appended to one
    spill file per store folder as fixed-width ASCII digests. Read in record batches of the image
    columns only, so the driver holds one batch, whatever the number of images."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for info in _files_outside_store(run_fs):
        if not info.base_name.endswith(".parquet"):
            continue
        with run_fs.fs.open_input_file(info.path) as f:
            parquet = pq.ParquetFile(f)
            columns = [x.name for x in parquet.schema_arrow if is_image_ref(x.type) or is_image_ref_list(x.type)]
            if not columns:
                continue
            for batch in parquet.iter_batches(batch_size=8192, columns=columns, use_threads=False):
                buckets: dict[str, list[bytes]] = {}
                for column in batch.columns:
                    if is_image_ref_list(column.type):
                        column = pc.list_flatten(column)
                    for sha in pc.struct_field(column, "sha256").drop_null().to_pylist():
                        if len(sha) == _SHA_LEN and sha.isascii():
                            buckets.setdefault(sha[:2], []).append(sha.encode("ascii"))
                for bucket, shas in buckets.items():
                    with open(f"{spill_dir}/{bucket}", "ab") as out:
                        out.write(b"".join(shas))


def _files_outside_store(run_fs: RunFS):
    """Every file of the run dir but the image store's (never listed here: it is the big one)."""
    for entry in run_fs.fs.get_file_info(pafs.FileSelector(run_fs.root)):
        if entry.type == pafs.FileType.File:
            yield entry
        elif entry.type == pafs.FileType.Directory and entry.base_name != STORE_DIR:
            for info in run_fs.fs.get_file_info(pafs.FileSelector(entry.path, recursive=True)):
                if info.type == pafs.FileType.File:
                    yield info


def _bucket_references(spill_dir: str, bucket: str) -> set[str]:
    import os

    path = f"{spill_dir}/{bucket}"
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as f:
        data = f.read()
    return {data[i:i + _SHA_LEN].decode("ascii") for i in range(0, len(data), _SHA_LEN)}


def _iter_garbage(run_fs: RunFS):
    """(path relative to the run dir, size) of each stored image no Parquet file of the run refers to,
    and of each temporary of a write that never finished, one store folder at a time in path order:
    the references are spilled to local disk by folder first, so memory is one folder's share."""
    import tempfile

    root = run_fs.path(STORE_DIR)
    if not run_fs.exists(STORE_DIR):
        return
    with tempfile.TemporaryDirectory(prefix="fusegen-gc-") as spill_dir:
        _spill_references(run_fs, spill_dir)
        top = sorted(run_fs.fs.get_file_info(pafs.FileSelector(root)), key=lambda i: i.path)
        for entry in top:
            if entry.type == pafs.FileType.File:
                # Nothing but temporaries lives beside the folders.
                yield entry.path[len(run_fs.root) + 1 :], entry.size or 0
                continue
            if entry.type != pafs.FileType.Directory:
                continue
            live = _bucket_references(spill_dir, entry.base_name)
            files = run_fs.fs.get_file_info(pafs.FileSelector(entry.path, recursive=True))
            for info in sorted(files, key=lambda i: i.path):
                if info.type != pafs.FileType.File:
                    continue
                if info.base_name.startswith(".") or info.base_name.split(".")[0] not in live:
                    yield info.path[len(run_fs.root) + 1 :], info.size or 0


def _garbage(run_fs: RunFS, keep: int | None, delete: bool) -> StoreGarbage:
    files, size, count = [], 0, 0
    for rel, nbytes in _iter_garbage(run_fs):
        if delete:
            run_fs.delete_file(rel)
        if keep is None or count < keep:
            files.append(rel)
        size += nbytes
        count += 1
    return StoreGarbage(files, size, count)


def store_garbage(run_fs: RunFS, keep: int | None = None) -> StoreGarbage:
    """Stored images no Parquet file of the run refers to (an ingest row that dedup dropped, a stage
    re-run that made other images), and temporaries of writes that never finished. `keep`: how many
    of their names to return (all by default; the count and bytes always cover all)."""
    return _garbage(run_fs, keep, delete=False)


def collect_store_garbage(run_fs: RunFS, keep: int | None = None) -> StoreGarbage:
    """Delete `store_garbage`, a store folder at a time. Only while no run writes to this run dir (the
    runner calls it once a run has finished every stage, under the run-dir lock; `fusegen gc` takes
    the lock too)."""
    return _garbage(run_fs, keep, delete=True)
