"""Declared indexes: a pool of an earlier stage's rows embedded once, persisted as a faiss index.

A stage declares an `IndexSpec` (which section's output, which embedding side stage, what identifies
the vectors). The runner builds it once per identity under `<index root>/<name>-<key>/`, where the
root is the run's `_index/` or a shared `index_dir` two runs can reuse:
  part-*.parquet, _parts/, _manifest.json   the embedding side stage (resumable shard by shard)
  ids.parquet, index.faiss [, vectors.npy]  the finished index, written by one Ray task
  ids.arrow, id_lookup.npy                  the ids memory-mapped, and (64-bit id hash, row) sorted
  [rows.arrow]                              the embed parts' other columns, when they have any
  _index.json                               written last: the index is complete
Each actor opens the index memory-mapped (`faiss.IO_FLAG_MMAP`; an index on an object store is
copied to the node's cache once), so nothing is rebuilt, retrained or held twice per actor.

`rows.arrow` carries what a stage needs to know about a hit besides its vector (the GME pool: doc_id,
content hashes, and the passage's text, title and image reference for hard negatives). It is an
uncompressed Arrow IPC file, memory-mapped like the faiss file: `OpenIndex.rows_at` reads only the
pages of the rows asked for, so a 1M-passage pool costs no per-actor heap and actors on a node share
the page cache. An embed stage with only (id, embedding), like consistency's, writes no such file.
The ids are looked up the same way (`OpenIndex.rows_of`): a binary search in the memory-mapped sorted
hashes, checked against the memory-mapped ids, instead of a Python list and dict of every id in every
actor (measured on 1M ids of 20 characters: ~140 MiB of heap per actor, vs 15 + 23 MiB of files that
the actors on a node share through the page cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.io.fs import RunFS

INDEX_ROOT = "_index"
DONE = "_index.json"
ROWS = "rows.arrow"
IDS = "ids.arrow"
LOOKUP = "id_lookup.npy"
# Columns of the embed parts that are not pool metadata.
_NOT_META = ("embedding",)


@dataclass(frozen=True)
class IndexSpec:
    # The stage's name for the index and the folder prefix (`text`, `image`, `gme`).
    name: str
    # Config section whose committed output is embedded (`ingest`: the passage pool), or None when the
    # embed stage plans and reads its own input (the image pool); `identity` must then name that input.
    source: str | None
    # A Stage whose rows are (id, embedding): the runner runs it over the source's parts.
    embed: Any
    # What makes the vectors (model id, embedder settings): with the source fingerprint, the key.
    identity: dict = field(default_factory=dict)
    kind: str = "flat"
    nlist: int = 0

    def key(self, source_fingerprint: str) -> str:
        blob = json.dumps({"source": source_fingerprint, "identity": self.identity, "kind": self.kind,
                           "nlist": self.nlist}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class IndexHandle:
    """What an actor needs to open a finished index (picklable, small)."""

    uri: str
    folder: str
    count: int
    dim: int
    kind: str

    def open(self, cache_dir: str = "~/.cache/fusegen/index") -> OpenIndex:
        run_fs = RunFS.from_uri(self.uri)
        local = _local_copy(run_fs, self.folder, os.path.expanduser(cache_dir))
        return OpenIndex(local, self)


class OpenIndex:
    """An index opened in an actor: `search`, `ids`, `row_of`, `vector(i)`, `rows_at(rows)`."""

    def __init__(self, local_dir: str, handle: IndexHandle) -> None:
        import faiss
        import pyarrow.parquet as pq

        if os.path.exists(f"{local_dir}/{IDS}") and os.path.exists(f"{local_dir}/{LOOKUP}"):
            self.ids: pa.Array = pa.ipc.open_file(pa.memory_map(f"{local_dir}/{IDS}")).read_all()["id"].combine_chunks()
            self._lookup = np.load(f"{local_dir}/{LOOKUP}", mmap_mode="r")
        else:  # an index folder written before the lookup files: built here, 16 bytes an id
            self.ids = pq.read_table(f"{local_dir}/ids.parquet")["id"].combine_chunks()
            self._lookup = id_lookup(self.ids.to_pylist())
        self.index = faiss.read_index(f"{local_dir}/index.faiss", faiss.IO_FLAG_MMAP) if len(self.ids) else None
        self.vectors = np.load(f"{local_dir}/vectors.npy", mmap_mode="r") if handle.kind != "flat" else None
        self._rows = _open_rows(f"{local_dir}/{ROWS}")

    def rows_of(self, ids: list) -> list[int | None]:
        """The pool row of each id (the last one when an id repeats), None where the pool lacks it."""
        if not ids:
            return []
        hashes = id_hashes([str(i) if i is not None else "" for i in ids])
        # Row 0 of the lookup is contiguous: a binary search touches a few pages, it copies nothing.
        keys, pool_rows = self._lookup[0], self._lookup[1]
        lo = np.searchsorted(keys, hashes, side="left")
        hi = np.searchsorted(keys, hashes, side="right")
        out: list[int | None] = []
        for wanted, a, b in zip(ids, lo.tolist(), hi.tolist()):
            # Equal hashes (the same id repeated, or a 64-bit collision) are checked against the ids.
            rows = [int(r) for r in pool_rows[a:b] if wanted is not None and self.ids[int(r)].as_py() == wanted]
            out.append(max(rows) if rows else None)
        return out

    @property
    def meta_columns(self) -> tuple[str, ...]:
        """The per-row metadata columns the index carries (empty for an (id, embedding)-only pool)."""
        return tuple(self._rows[0].schema.names) if self._rows else ()

    def rows_at(self, rows, columns: list[str] | None = None) -> pa.Table:
        """Metadata of pool rows `rows` (in that order, repeats allowed), reading only their pages."""
        if not self._rows:
            raise KeyError("this index carries no row metadata (its embed stage wrote only id and embedding)")
        reader, starts = self._rows
        rows = np.asarray(rows, np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= starts[-1]):
            raise IndexError(f"pool rows out of range 0..{starts[-1] - 1}")
        schema = reader.schema if columns is None else pa.schema([reader.schema.field(c) for c in columns])
        batch_of = np.searchsorted(starts, rows, side="right") - 1
        pieces, order = [], []
        for b in np.unique(batch_of):
            where = np.flatnonzero(batch_of == b)
            batch = reader.get_batch(int(b))
            batch = batch.select(schema.names) if columns is not None else batch
            pieces.append(batch.take(pa.array(rows[where] - starts[b])))
            order.append(where)
        if not pieces:
            return schema.empty_table()
        table = pa.Table.from_batches(pieces, schema)
        # Back to the caller's order: position k of the concatenation holds request order[k].
        return table.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    def vector(self, row: int) -> np.ndarray:
        if self.vectors is not None:
            return np.asarray(self.vectors[row])
        return self.index.reconstruct(int(row))

    def search(self, queries: np.ndarray, k: int, nprobe: int = 16) -> tuple[np.ndarray, np.ndarray]:
        if self.index is None or not len(queries):
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = nprobe
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.index.ntotal))


def id_hashes(ids: list[str]) -> np.ndarray:
    """64-bit BLAKE2b of each id (stable across processes and versions, unlike `hash`)."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(i.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
         for i in ids),
        np.uint64, count=len(ids),
    )


def id_lookup(ids: list[str]) -> np.ndarray:
    """A (2, n) uint64 array: row 0 the ids' hashes sorted, row 1 the pool row of each (rows of equal
    hashes in row order). Two contiguous rows, so that a memory-mapped search reads, not copies."""
    return lookup_of_hashes(id_hashes(ids))


def lookup_of_hashes(hashes: np.ndarray) -> np.ndarray:
    order = np.argsort(hashes, kind="stable")
    return np.stack([hashes[order], order.astype(np.uint64)])


def _open_rows(path: str):
    """(memory-mapped IPC reader, first pool row of each record batch + total) or None."""
    if not os.path.exists(path):
        return None
    reader = pa.ipc.open_file(pa.memory_map(path))
    sizes = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
    return reader, np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])


def _local_copy(run_fs: RunFS, folder: str, cache_dir: str) -> str:
    """The folder on local disk: itself on a local filesystem, else a copy in the node's cache."""
    import pyarrow.fs as pafs

    if isinstance(run_fs.fs, pafs.LocalFileSystem):
        return run_fs.path(folder)
    target = os.path.join(cache_dir, folder.replace("/", "_"))
    if not os.path.exists(os.path.join(target, DONE)):
        tmp = f"{target}.{os.getpid()}.tmp"
        os.makedirs(tmp, exist_ok=True)
        for name in ("ids.parquet", IDS, LOOKUP, "index.faiss", "vectors.npy", ROWS, DONE):
            if run_fs.exists(f"{folder}/{name}"):
                # Streamed in 16-MiB pieces: a pool's index or vectors can be larger than an actor's memory.
                with run_fs.fs.open_input_stream(run_fs.path(folder, name)) as src, \
                        open(os.path.join(tmp, name), "wb") as out:
                    while chunk := src.read(1 << 24):
                        out.write(chunk)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another actor on this node finished its copy first; use that one.
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedding_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)


def read_embeddings(run_fs: RunFS, parts: list[str]) -> tuple[list[str], np.ndarray]:
    """(ids, float32 matrix n x dim) from embedding parts (paths relative to `run_fs`), in order."""
    ids, blocks = [], []
    for rel in parts:
        table = run_fs.read_parquet(rel, columns=["id", "embedding"])
        ids += table["id"].to_pylist()
        column = table["embedding"].combine_chunks()
        blocks.append(column.values.to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size))
    if not blocks:
        return [], np.zeros((0, 0), np.float32)
    return ids, np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)


def build_faiss(matrix: np.ndarray, kind: str = "flat", nlist: int = 0):
    """Inner-product index over L2-normalised rows (= cosine). `ivf` for big pools, exact `flat` else.

    IVF falls back to flat below 40 points per list (faiss's own training minimum); nlist 0 = 4*sqrt(n).
    The whole matrix in memory: `finish_index` streams the same build part by part.
    """
    n, dim = matrix.shape
    lists = ivf_lists(n, kind, nlist)
    if lists:
        index = _trained_ivf(matrix, dim, lists)
        index.add(matrix)
        return index
    return _flat_filled(dim, n, [matrix])


def ivf_lists(n: int, kind: str, nlist: int) -> int:
    """The IVF list count for `n` vectors, or 0 where the index is flat (asked, or too few points)."""
    if kind != "ivf":
        return 0
    lists = nlist or max(1, int(4 * np.sqrt(n)))
    return lists if n >= 40 * lists else 0


# faiss's k-means trains on at most this many points per centroid (it samples the rest away itself).
_TRAIN_PER_LIST = 256


def _trained_ivf(sample: np.ndarray, dim: int, lists: int):
    import faiss

    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 1234  # deterministic k-means: reruns give the same lists, hence the same ranks
    index.train(sample)
    return index


def _flat_filled(dim: int, n: int, blocks) -> Any:
    """An exact inner-product index of `n` vectors filled from `blocks` in order, with no second copy:
    the index's own storage is sized once and written in place (`IndexFlat.add` would grow a vector,
    and a flat index built from a matrix holds the matrix twice)."""
    import faiss

    index = faiss.IndexFlatIP(dim)
    if n == 0:
        return index
    size = n * dim * 4
    index.codes.resize(size)
    storage = faiss.rev_swig_ptr(index.codes.data(), size).view(np.float32).reshape(n, dim)
    row = 0
    for block in blocks:
        if row + len(block) > n:
            raise ValueError(f"index parts hold more than the {n} vectors their metadata declared")
        storage[row:row + len(block)] = block
        row += len(block)
    if row != n:
        raise ValueError(f"index parts hold {row} vectors, their metadata declared {n}")
    index.ntotal = n
    return index


def write_rows(run_fs: RunFS, folder: str, parts: list[str]) -> list[str]:
    """The parts' columns other than the embedding -> `rows.arrow`, one record batch per part,
    streamed (never the whole pool in memory). Returns the columns written ([] = no file)."""
    import pyarrow.parquet as pq

    if not parts:
        return []
    schema = pq.read_schema(run_fs.path(parts[0]), filesystem=run_fs.fs)
    names = [n for n in schema.names if n not in _NOT_META]
    if names == ["id"]:
        return []
    meta = pa.schema([schema.field(n) for n in names])

    def write(sink) -> None:
        with pa.ipc.new_file(sink, meta) as writer:
            for rel in parts:
                for batch in run_fs.read_parquet(rel, columns=names).cast(meta).to_batches():
                    writer.write_batch(batch)

    run_fs.write_stream(f"{folder}/{ROWS}", write)
    return names


def _write_ipc(sink, table: pa.Table) -> None:
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _part_sizes(run_fs: RunFS, parts: list[str]) -> tuple[list[int], int]:
    """(rows of each part, vector dim) from the parts' Parquet footers, before any vector is read."""
    import pyarrow.parquet as pq

    sizes, dim = [], 0
    for rel in parts:
        with run_fs.fs.open_input_file(run_fs.path(rel)) as f:
            meta = pq.read_metadata(f)
            sizes.append(meta.num_rows)
            dim = dim or meta.schema.to_arrow_schema().field("embedding").type.list_size
    return sizes, max(dim, 0)


def _part_blocks(run_fs: RunFS, parts: list[str], on_ids=None):
    """Each part's float32 (rows x dim) block in order, one part in memory at a time; `on_ids` sees
    each part's id column first."""
    for rel in parts:
        table = run_fs.read_parquet(rel, columns=["id", "embedding"])
        if on_ids is not None:
            on_ids(table["id"].cast(pa.string()))
        column = table["embedding"].combine_chunks()
        yield np.ascontiguousarray(
            column.values.to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size),
            dtype=np.float32,
        )


def _training_sample(run_fs: RunFS, parts: list[str], sizes: list[int], lists: int) -> np.ndarray:
    """The rows faiss's k-means trains on: all of them up to `_TRAIN_PER_LIST` per list (what faiss would
    use of a full matrix), else a seeded sample of that many, gathered one part at a time."""
    n = sum(sizes)
    cap = _TRAIN_PER_LIST * lists
    chosen = None if n <= cap else np.sort(np.random.default_rng(1234).choice(n, cap, replace=False))
    picked, start = [], 0
    for block in _part_blocks(run_fs, parts):
        if chosen is None:
            picked.append(block)
        else:
            lo, hi = np.searchsorted(chosen, [start, start + len(block)])
            picked.append(block[chosen[lo:hi] - start])
        start += len(block)
    return np.concatenate(picked)


def _add_to_sized_lists(index, n: int, blocks) -> None:
    """`index.add` of every block, with each inverted list allocated once at its final size: the vectors
    are assigned to lists first (8 bytes a row), so no list grows by doubling (up to 2x its content)."""
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    assigned = np.empty(n, np.int64)
    row = 0
    for block in blocks():
        assigned[row:row + len(block)] = index.quantizer.search(block, 1)[1][:, 0]
        row += len(block)
    invlists = faiss.extract_index_ivf(index).invlists
    for list_no, count in enumerate(np.bincount(assigned, minlength=index.nlist).tolist()):
        if count:
            invlists.resize(list_no, count)  # from empty: capacity exactly `count`
            invlists.resize(list_no, 0)  # size back to 0, capacity kept
    row = 0
    for block in blocks():
        add_preassigned(index, block, assigned[row:row + len(block)])
        row += len(block)


def _write_npy(out, n: int, dim: int, blocks) -> None:
    np.lib.format.write_array_header_1_0(
        out, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": (n, dim)})
    for block in blocks:
        out.write(block.tobytes())


def finish_index(uri: str, folder: str, parts: list[str], kind: str, nlist: int) -> dict:
    """Ray task: embedding parts -> ids.parquet, index.faiss (and vectors.npy for IVF), rows.arrow
    when the parts carry metadata columns, then _index.json.

    Streamed: one part's vectors at a time besides the index itself (a flat index is filled in place;
    IVF trains on its sample, drops it, then adds part by part), the faiss file written straight into
    the run's output stream, the ids through Arrow writers; the driver-side id list is 8 bytes a row
    (its hash). Peak memory is the index plus one part (and, for IVF, the training sample while training).
    """
    import faiss
    import pyarrow.parquet as pq

    started = time.monotonic()
    run_fs = RunFS.from_uri(uri)
    sizes, dim = _part_sizes(run_fs, parts)
    n = sum(sizes)
    id_schema = pa.schema([pa.field("id", pa.string())])
    hashes: list[np.ndarray] = []
    lists = ivf_lists(n, kind, nlist)

    def write_ids(parquet_out, ipc_out) -> None:
        with pq.ParquetWriter(parquet_out, id_schema) as pw, pa.ipc.new_file(ipc_out, id_schema) as iw:
            for rel in parts:
                ids = run_fs.read_parquet(rel, columns=["id"])["id"].cast(pa.string())
                batch = pa.table({"id": ids})
                pw.write_table(batch)
                iw.write_table(batch)
                hashes.append(id_hashes(ids.to_pylist()))

    run_fs.write_stream(
        f"{folder}/ids.parquet",
        lambda pq_out: run_fs.write_stream(f"{folder}/{IDS}", lambda ipc_out: write_ids(pq_out, ipc_out)),
    )
    lookup = lookup_of_hashes(np.concatenate(hashes) if hashes else np.zeros(0, np.uint64))
    hashes.clear()
    run_fs.write_stream(f"{folder}/{LOOKUP}", lambda out, arr=lookup: np.save(out, arr))
    del lookup
    meta = write_rows(run_fs, folder, parts)
    built = "flat"
    if n:
        if lists:
            index = _trained_ivf(_training_sample(run_fs, parts, sizes, lists), dim, lists)
            _add_to_sized_lists(index, n, lambda: _part_blocks(run_fs, parts))
            built = "ivf"
            run_fs.write_stream(f"{folder}/vectors.npy",
                                lambda out: _write_npy(out, n, dim, _part_blocks(run_fs, parts)))
        else:
            index = _flat_filled(dim, n, _part_blocks(run_fs, parts))
        run_fs.write_stream(f"{folder}/index.faiss",
                            lambda out: faiss.write_index(index, faiss.PyCallbackIOWriter(out.write)))
        del index
    seconds = round(time.monotonic() - started, 3)
    done = {"count": n, "dim": dim if n else 0, "kind": built, "meta": meta, "seconds": seconds}
    run_fs.write_json(f"{folder}/{DONE}", done)
    return done
