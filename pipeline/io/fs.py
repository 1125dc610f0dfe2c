"""Run-directory storage on any pyarrow filesystem (local path, s3://, gs://, ...).

Every file a stage commits is written under a temporary name and renamed, so a reader (or a resumed
run) sees either the whole file or nothing. On object stores, where rename is a copy, the commit
marker written last (see runner) still decides what counts as done.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import faults


@dataclass(frozen=True)
class RunFS:
    """A filesystem plus a root path inside it."""

    fs: pafs.FileSystem
    root: str

    @classmethod
    def from_uri(cls, uri: str) -> RunFS:
        if "://" in uri:
            fs, path = pafs.FileSystem.from_uri(uri)
        else:
            import os

            fs, path = pafs.LocalFileSystem(), os.path.abspath(uri)
        return cls(fs, path.rstrip("/"))

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def mkdir(self, rel: str) -> None:
        self.fs.create_dir(self.path(rel), recursive=True)

    def listdir(self, rel: str, suffix: str = "") -> list[str]:
        """Sorted base names of the files directly under `rel` (empty when it does not exist)."""
        if not self.exists(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=False))
        return sorted(
            i.base_name
            for i in infos
            if i.type == pafs.FileType.File and i.base_name.endswith(suffix) and not i.base_name.startswith(".")
        )

    def list_files(self, rel: str) -> list[str]:
        """Relative paths of every file directly under `rel`, temporaries (dot files) included."""
        if not self.exists(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=False))
        return sorted(f"{rel.rstrip('/')}/{i.base_name}" for i in infos if i.type == pafs.FileType.File)

    def list_dirs(self, rel: str) -> list[str]:
        """Base names of the folders directly under `rel`."""
        if not self.exists(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=False))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def delete_dir(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_dir(self.path(rel))

    def delete_file(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def _atomic(self, rel: str, write) -> None:
        final = self.path(rel)
        parent, _, name = final.rpartition("/")
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        write(tmp)
        faults.storage("write", final)
        self.fs.move(tmp, final)
        faults.written(final)

    def write_bytes(self, rel: str, data: bytes) -> None:
        def write(tmp: str) -> None:
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)

        self._atomic(rel, write)

    def write_stream(self, rel: str, write) -> None:
        """Write a file through `write(output_stream)`, atomically (streamed: a big file needs no buffer)."""

        def run(tmp: str) -> None:
            with self.fs.open_output_stream(tmp) as out:
                write(out)

        self._atomic(rel, run)

    def write_json(self, rel: str, obj: object) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())

    def read_bytes(self, rel: str) -> bytes:
        faults.storage("read", self.path(rel))
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_json(self, rel: str) -> dict | None:
        if not self.exists(rel):
            return None
        return json.loads(self.read_bytes(rel))

    def write_parquet(self, rel: str, table: pa.Table, max_row_group_bytes: int | None = None) -> None:
        """Write `table` atomically; with `max_row_group_bytes`, cut row groups so that none holds more
        binary payload than that (a single larger row gets a group of its own)."""
        compression = parquet_compression(table.schema)
        if not max_row_group_bytes:
            self._atomic(rel, lambda tmp: pq.write_table(table, tmp, filesystem=self.fs, compression=compression))
            return

        def write(tmp: str) -> None:
            with pq.ParquetWriter(tmp, table.schema, filesystem=self.fs, compression=compression) as writer:
                start = 0
                for n in row_group_sizes(table, max_row_group_bytes):
                    writer.write_table(table.slice(start, n), row_group_size=n)
                    start += n

        self._atomic(rel, write)

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        faults.storage("read", self.path(rel))
        return pq.read_table(self.path(rel), filesystem=self.fs, columns=columns)

    def parquet_rows(self, rel: str) -> int:
        with self.fs.open_input_file(self.path(rel)) as f:
            return pq.ParquetFile(f).metadata.num_rows


def parquet_compression(schema: pa.Schema) -> dict[str, str]:
    """Per-column Parquet compression: zstd, except binary leaves (image bytes: JPEG/PNG do not
    compress, and zstd over them cost an image-heavy export about a third of its write time)."""

    def leaves(name: str, tp: pa.DataType):
        if pa.types.is_struct(tp):
            for child in tp:
                yield from leaves(f"{name}.{child.name}", child.type)
        elif pa.types.is_list(tp) or pa.types.is_large_list(tp) or pa.types.is_fixed_size_list(tp):
            yield from leaves(f"{name}.list.element", tp.value_type)
        elif pa.types.is_map(tp):
            yield from leaves(f"{name}.key_value.key", tp.key_type)
            yield from leaves(f"{name}.key_value.value", tp.item_type)
        else:
            yield name, tp

    return {
        path: "none" if pa.types.is_binary(tp) or pa.types.is_large_binary(tp) else "zstd"
        for field in schema
        for path, tp in leaves(field.name, field.type)
    }


def row_bytes(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Binary and string payload bytes per row, through structs and lists (image bytes dominate)."""
    if isinstance(array, pa.ChunkedArray):
        chunks = [row_bytes(c) for c in array.chunks]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    tp = array.type
    if pa.types.is_binary(tp) or pa.types.is_large_binary(tp) or pa.types.is_string(tp) or pa.types.is_large_string(tp):
        return pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_struct(tp):
        total = np.zeros(len(array), np.int64)
        for child in array.flatten():
            total += row_bytes(child)
        return total
    if pa.types.is_list(tp) or pa.types.is_large_list(tp):
        inner = np.concatenate([[0], np.cumsum(row_bytes(array.values))])
        offsets = array.offsets.to_numpy()
        return inner[offsets[1:]] - inner[offsets[:-1]]
    return np.zeros(len(array), np.int64)


def row_group_sizes(table: pa.Table, max_bytes: int) -> list[int]:
    """Rows per row group, greedy in row order, each group's binary payload <= `max_bytes`.

    Arrow binary arrays index their bytes with int32 offsets, so a reader that loads a row group with
    more than 2 GiB in one binary column overflows; image-heavy rows would get there in a few
    thousand rows. A row larger than the cap alone gets a group of its own.
    """
    if table.num_rows == 0:
        return [0]
    sizes = np.zeros(table.num_rows, np.int64)
    for column in table.columns:
        sizes += row_bytes(column)
    groups, current, count = [], 0, 0
    for size in sizes.tolist():
        if count and current + size > max_bytes:
            groups.append(count)
            current, count = 0, 0
        current += size
        count += 1
    groups.append(count)
    return groups
