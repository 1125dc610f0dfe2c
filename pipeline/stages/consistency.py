"""consistency: the round-trip filter. A generated query is kept only if, searching the whole passage
pool with it, its own source passage ranks within the top k (GME: gte-Qwen2 class embedder, k=20).

Input columns: id, doc_id, query. Output: every input column plus `consistency_rank` (1-based rank
of the source passage, null when it is not in the top k) and `consistency_score` (cosine similarity
of the query and its source passage). Dropped rows: `filter:consistency` (source not in the top k),
`filter:empty_query`, `error:source_not_in_pool` (the query's doc_id is not an ingested passage).

The pool (every passage ingest kept) is a declared index (pipeline/io/indexes.py): the runner embeds
it once per ingest output and embedder into `_index/text-<key>/` (resumable shard by shard like a
stage, or reused from a shared `index_dir`) and every actor opens the faiss file memory-mapped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from pipeline.config import check, to_dict
from pipeline.io.index_config import RENAMED_KEYS, IndexConfig
from pipeline.io.indexes import IndexHandle, IndexSpec
from pipeline.models.text_embed import TextEmbedConfig, TextEmbedder, passage_texts
from pipeline.scheduling import Phase
from pipeline.stage import (
    FILTERED,
    OK,
    REJECTED,
    Resources,
    Stage,
    StageConfig,
    actor_map,
    actor_pool,
    set_status,
)
from pipeline.stages.gme_pool import POOL_SCHEMA, pool_rows


@dataclass(frozen=True)
class ConsistencyConfig(StageConfig):
    RENAMED: ClassVar[dict[str, str]] = RENAMED_KEYS

    embedder: TextEmbedConfig = dataclasses.field(default_factory=TextEmbedConfig)
    top_k: int = 20
    # The passage pool's index: `flat` (exact, fine to a few million passages on one node) or `ivf`.
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(batch_size=64, shard_rows=1024))

    def __post_init__(self) -> None:
        check(self.top_k >= 1, "consistency", "top_k", f"must be >= 1 (got {self.top_k})")


def source_ranks(hits: np.ndarray, sources: list[int | None]) -> list[int | None]:
    """1-based rank of each row's source passage among its hits (row indices, best first), else None."""
    ranks: list[int | None] = []
    for row, src in zip(hits, sources):
        where = np.flatnonzero(row == src) if src is not None else []
        ranks.append(int(where[0]) + 1 if len(where) else None)
    return ranks


def decide(rank: int | None, src: int | None, query: str) -> tuple[str, str]:
    if not query.strip():
        return FILTERED, "filter:empty_query"
    if src is None:
        return REJECTED, "error:source_not_in_pool"
    if rank is None:
        return FILTERED, "filter:consistency"
    return OK, ""


class PoolEmbedFn:
    """Ray actor: passages in, (id, embedding) and the pool metadata out (gme_pool.pool_rows: negatives
    with a text stand-in for GME mine from this pool)."""

    def __init__(self, model_path: str, cfg: dict, batch_size: int) -> None:
        self.cfg = TextEmbedConfig(**cfg)
        self.embedder = TextEmbedder(model_path, self.cfg)
        self.batch_size = batch_size

    def __call__(self, table: pa.Table) -> pa.Table:
        texts = passage_texts(table["title"].to_pylist(), table["text"].to_pylist(), self.cfg)
        return pool_rows(table, self.embedder.encode(texts, self.batch_size), [False] * table.num_rows)


class ConsistencyFn:
    """Ray actor: embeds the shard's queries, searches the pool, ranks each query's source passage."""

    def __init__(self, model_path: str, cfg: dict, index: IndexHandle) -> None:
        self.cfg = ConsistencyConfig.from_dict(cfg)
        self.embedder = TextEmbedder(model_path, self.cfg.embedder)
        self.pool = index.open()

    def __call__(self, table: pa.Table) -> pa.Table:
        queries = [q or "" for q in table["query"].to_pylist()]
        sources = self.pool.rows_of(table["doc_id"].to_pylist())
        vectors = self.embedder.encode([self.cfg.embedder.query_prefix + q for q in queries],
                                       self.cfg.resources.batch_size)
        _, hits = self.pool.search(vectors, self.cfg.top_k, self.cfg.index.nprobe)
        ranks = source_ranks(hits, sources) if hits.shape[1] else [None] * len(queries)
        scores = [float(vectors[i] @ self.pool.vector(s)) if s is not None else None for i, s in enumerate(sources)]
        decided = [decide(r, s, q) for r, s, q in zip(ranks, sources, queries)]
        table = table.append_column("consistency_rank", pa.array(ranks, pa.int32()))
        table = table.append_column("consistency_score", pa.array(scores, pa.float32()))
        return set_status(table, [d[0] for d in decided], [d[1] for d in decided])


class PoolEmbed(Stage):
    """Not a pipeline stage: the runner runs it to build the passage pool index (resumable)."""

    name: ClassVar[str] = "consistency:pool"
    config_cls: ClassVar[type] = ConsistencyConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id", "doc_id", "text", "title", "image", "content_hash")
    output_columns: ClassVar[tuple[str, ...]] = ("embedding", *POOL_SCHEMA.names)

    def __init__(self, config: ConsistencyConfig, context, model_path: str) -> None:
        super().__init__(config, context)
        self.model_path = model_path

    def schedule(self) -> tuple[Phase, ...]:
        return (Phase(self.name, (actor_pool("PoolEmbedFn", self.config.resources, "consistency"),)),)

    def apply(self, ds):
        return actor_map(ds, PoolEmbedFn, {"model_path": self.model_path, "cfg": to_dict(self.config.embedder),
                                            "batch_size": self.config.resources.batch_size}, self.config.resources)


def text_pool_spec(embedder: TextEmbedConfig, model_path: str, model_id: str, index: IndexConfig,
                   resources: Resources, context) -> IndexSpec:
    """The `text` passage pool (every passage ingest kept, embedded with `embedder`): consistency's, and
    gme_score's and negatives' with their text stand-in; equal embedder settings give one index."""
    cfg = ConsistencyConfig(embedder=embedder, index=index, resources=resources)
    # `rows`: the pool carries its passages' metadata (an older pool held vectors only: rebuilt once).
    identity = {**to_dict(embedder), "model_id": model_id, "rows": "passages"}
    return IndexSpec("text", "ingest", PoolEmbed(cfg, context, model_path), identity, index.kind, index.nlist)


class Consistency(Stage):
    name: ClassVar[str] = "consistency"
    config_cls: ClassVar[type] = ConsistencyConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id", "doc_id", "query")
    output_columns: ClassVar[tuple[str, ...]] = ("consistency_rank", "consistency_score")

    def prepare(self) -> None:
        from pipeline.models.sources import resolve_model

        self.model_path, self.model_id = resolve_model(
            self.config.embedder.model, self.context.cache_dir, None, "consistency.embedder"
        )

    def models(self) -> dict[str, str]:
        return {"text_embedder": self.model_id}

    def indexes(self) -> tuple[IndexSpec, ...]:
        """The passage pool: every passage ingest kept, embedded with this stage's embedder."""
        cfg = self.config
        return (text_pool_spec(cfg.embedder, self.model_path, self.model_id, cfg.index, cfg.resources, self.context),)

    def schedule(self) -> tuple[Phase, ...]:
        """The passage pool index's build (`PoolEmbed`), then the ConsistencyFn actors."""
        own = Phase(self.name, (actor_pool("ConsistencyFn", self.config.resources, self.name),))
        return (*PoolEmbed(self.config, self.context, "").schedule(), own)

    def apply(self, ds):
        kwargs = {"model_path": self.model_path, "cfg": to_dict(self.config), "index": self.bound_indexes["text"]}
        return actor_map(ds, ConsistencyFn, kwargs, self.config.resources)
