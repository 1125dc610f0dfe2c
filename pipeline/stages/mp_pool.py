"""pool: the MegaPairs track's first stage. Reads an image corpus into the run's image store.

Input: `pool.path`, a folder of images (an optional `<stem>.txt` beside an image is its caption; the
id is the image's path under the folder), or a JSONL / Parquet table (file, folder or glob) whose rows
carry the image as a local path, bytes, an HF image struct or a URL, plus optional id, caption and
license columns (names configurable). The reading is the image pool reader's (pipeline/io/image_pool.py),
the one the images stage's pool index uses; here the images go into the RUN's image store.

Output, one row per kept pool image: `id` (string, unique), `image` (image reference), `caption`
(string|null), `license` (string|null), `origin` (string: relative path, `file.parquet#row3`, URL).
Dropped rows: every bad image `error:image_*` and bad record `error:*` (the reader's reasons);
`filter:duplicate_image` (the same SHA-256 as an earlier kept image, first in shard order wins) and
`error:duplicate_id` (an id already kept), decided in shard order by io/dedup.py from the rows' keys only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import check, to_dict
from pipeline.io.dedup import DedupRule, hex_keys, row_keys, text_keys
from pipeline.io.fetch_config import FetchConfig
from pipeline.io.image_pool import (
    POOL_READERS,
    POOL_SCHEMA,
    PoolColumns,
    PoolConfig,
    load_pool_batch,
    plan_pool,
    pool_identity,
)
from pipeline.stage import BlockStep, Resources, Stage, StageConfig

IDENTITY_MODES = ("auto", "hash", "stat")


@dataclass(frozen=True)
class MegaPoolConfig(StageConfig):
    # The pool's files (`input_identity`: names under the pool folder, sizes, hashes or mtimes) enter the
    # fingerprint, not the path string: the same pool in another folder resumes instead of starting over.
    OPERATIONAL: ClassVar[frozenset] = frozenset({"path"})

    # Folder of images, or JSONL/Parquet table(s); relative paths from the directory fusegen runs in.
    path: str = "samples/megapairs/pool.jsonl"
    columns: PoolColumns = dataclasses.field(default_factory=PoolColumns)
    # License recorded for images whose row names none (a folder pool has no license column).
    default_license: str | None = None
    # `hash` (SHA-256 of the files), `stat` (size and mtime), `auto` (hash up to 2 GiB in all).
    identity: Literal["auto", "hash", "stat"] = "auto"
    # A table shard also ends once it holds this many MB of input (images inline).
    shard_mb: int = 512
    # Image limits and sizing (max_side, max_pixels, min_side, max_aspect, jpeg_quality) and the URL
    # fetcher (timeouts, retries, allow-list) for rows that give an image URL.
    fetch: FetchConfig = dataclasses.field(default_factory=FetchConfig)
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(shard_rows=256))

    def __post_init__(self) -> None:
        check(bool(self.path and str(self.path).strip()), "pool", "path", "must name a folder, file or glob")
        names = list(dataclasses.asdict(self.columns).values())
        check(all(isinstance(n, str) and n.strip() for n in names) and len(set(names)) == len(names), "pool",
              "columns", f"must be distinct, non-empty column names (got {dataclasses.asdict(self.columns)})")
        check(self.default_license is None or bool(str(self.default_license).strip()), "pool", "default_license",
              "must be a license name (e.g. CC0-1.0) or null")
        check(self.identity in IDENTITY_MODES, "pool", "identity",
              f"must be one of {', '.join(IDENTITY_MODES)} (got {self.identity!r})")
        check(self.shard_mb >= 1, "pool", "shard_mb", f"must be >= 1 (got {self.shard_mb})")

    def pool_config(self) -> PoolConfig:
        """The pool reader's view of this section (shards cut at `resources.shard_rows`)."""
        return PoolConfig(path=self.path, columns=self.columns, default_license=self.default_license,
                          identity=self.identity, shard_rows=self.resources.shard_rows, shard_mb=self.shard_mb)


class MegaPool(Stage):
    name: ClassVar[str] = "pool"
    config_cls: ClassVar[type] = MegaPoolConfig
    input_columns: ClassVar[tuple[str, ...]] = ()
    output_columns: ClassVar[tuple[str, ...]] = tuple(POOL_SCHEMA.names)
    # Dedup keeps the first occurrence, so shards commit in pool order.
    ordered_commit: ClassVar[bool] = True
    dedup: ClassVar[DedupRule] = DedupRule(("image", "id"), "filter:duplicate_image", "error:duplicate_id")

    def input_identity(self) -> dict:
        """The pool's files: an edited image, caption or table re-runs the stage."""
        ctx = self.context
        exclude = (ctx.run_uri, ctx.index_uri) if ctx is not None else ()
        return pool_identity(self.config.pool_config(), self.name, exclude)

    def plan(self, ctx, upstream):
        # An empty pool plans no shard: the stage completes with 0 rows (plan_pool says why).
        return plan_pool(self.config.pool_config(), self.name)

    def readers(self) -> dict:
        return dict(POOL_READERS)

    def task_steps(self) -> list[BlockStep]:
        cfg = self.config
        kwargs = {"cfg": to_dict(cfg.pool_config()), "fetch": to_dict(cfg.fetch), "store_uri": self.context.run_uri}
        return [BlockStep(load_pool_batch, kwargs)]

    def dedup_keys(self, kept: pa.Table) -> np.ndarray:
        """Only what dedup needs reaches the driver: each kept row's image hash (its first 128 bits, as
        ingest keys its content hashes) and id, as keys."""
        return row_keys(hex_keys(_shas(kept["image"])), text_keys(kept["id"].to_pylist()))


def _shas(images: pa.ChunkedArray) -> list[str]:
    return pc.struct_field(images, "sha256").to_pylist() if len(images) else []
