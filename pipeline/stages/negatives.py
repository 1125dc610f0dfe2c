"""negatives: hard negatives for each fused query, mined from the GME passage pool (GME §1a row 8).

The fused query (rewritten query + entity image, under the task instruction, encoded exactly as in
gme_score) searches the `gme` pool index; the best `search_k` hits are candidates. Excluded: the
positive itself, its duplicates (same content_hash or same loose text_hash), passages of the same
source (same doc_id, or same title with `source_key: title`), hits outside the rank window
(`range_min` < rank <= `range_max`), and the false-negative guards: `max_score`, `margin` (drop
score > pos - margin), `relative_margin` (drop score > pos - |pos| * relative_margin; NV-Retriever's
TopK-PercPos, 0.05 by default) and `min_score`. The best `num_negatives` survivors are kept, best first.
Knob names follow sentence-transformers' `mine_hard_negatives`; ranks here count every hit, the
positive included (they are the ranks written to `neg_ranks`). The positive's score is recomputed with
this stage's model (`neg_pos_score`), so re-mining with a fine-tuned checkpoint (ANCE-style: another
`gme.model`) keeps the margins consistent; gme_score's columns are not read.

Negative texts, titles and images come from the pool index's metadata (rows.arrow, memory-mapped;
io/indexes.py): only the pages of the rows a shard hits are read, no actor loads the passage table.

Input columns: id, doc_id, rewritten_query, query_image. Output: every input column plus `neg_ids`,
`neg_doc_ids`, `neg_texts`, `neg_titles` (list<string>), `neg_images` (list<IMAGE_REF>, null items for
passages without an image), `neg_scores` (list<float32>), `neg_ranks` (list<int32>, 1-based rank in
the GME search), `num_negatives` (int32) and `neg_pos_score` (float32). Dropped rows:
`error:no_query_image`, `error:image_<kind>` (io/images.decode_image), GME image errors
(`error:image_too_small`...), `error:source_not_in_pool`, `filter:empty_query`, `filter:too_few_negatives`
(fewer than `min_negatives` survived; the mined ones stay in the reject for inspection).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

import numpy as np
import pyarrow as pa

from pipeline.config import check
from pipeline.io.image_store import IMAGE_REF
from pipeline.io.index_config import RENAMED_KEYS, IndexConfig
from pipeline.models.gme import GmeConfig
from pipeline.models.text_embed import TextEmbedConfig
from pipeline.stage import FILTERED, OK, REJECTED, Resources, StageConfig, set_status
from pipeline.stages.gme_score import GmeQueryFn, GmeStage, check_embedder

OUTPUT_TYPES = {
    "neg_ids": pa.list_(pa.string()),
    "neg_doc_ids": pa.list_(pa.string()),
    "neg_texts": pa.list_(pa.string()),
    "neg_titles": pa.list_(pa.string()),
    "neg_images": pa.list_(IMAGE_REF),
    "neg_scores": pa.list_(pa.float32()),
    "neg_ranks": pa.list_(pa.int32()),
    "num_negatives": pa.int32(),
    "neg_pos_score": pa.float32(),
}
# Pool columns the exclusions compare (read for every hit) and those a kept negative carries.
KEY_COLUMNS = ["id", "doc_id", "title", "content_hash", "text_hash"]
PAYLOAD_COLUMNS = ["id", "doc_id", "title", "text", "image"]


@dataclass(frozen=True)
class NegativesConfig(StageConfig):
    RENAMED: ClassVar[dict[str, str]] = RENAMED_KEYS

    # The mining model; by default gme_score's, so both share one pool. Another model (a checkpoint
    # fine-tuned on this data) re-mines ANCE-style and gets its own pool.
    gme: GmeConfig = dataclasses.field(default_factory=GmeConfig)
    # gme: the fused query and the pool through `gme`. text: `text_embedder` stands in for GME (the demo,
    # whose GME is a random tiny model): the query the rewrite came from (`query`, entity named) searches
    # the text pool consistency built (one index when the embedder settings agree); scores are its cosines.
    embedder: Literal["gme", "text"] = "gme"
    text_embedder: TextEmbedConfig = dataclasses.field(default_factory=TextEmbedConfig)
    # None reads prompts/gme_score/instruction.txt: the query is encoded as gme_score encodes it.
    instruction: str | None = None
    # As in gme_score; must match it for the two stages to share one pool.
    passage_images: bool = True
    num_negatives: int = 8
    # Rows with fewer survivors are filtered (`filter:too_few_negatives`); 0 keeps every row.
    min_negatives: int = 1
    # Hits pulled per query (faiss k); duplicates, same-source passages and the guards eat into them.
    search_k: int = 64
    # Rank window over the hits (1-based, positive included): range_min < rank <= range_max; 0 = search_k.
    range_min: int = 0
    range_max: int = 0
    # False-negative guards (None = off), as in sentence-transformers' mine_hard_negatives.
    margin: float | None = None
    relative_margin: float | None = 0.05
    max_score: float | None = None
    min_score: float | None = None
    # Skip passages of the positive's source: same doc_id, or same title (Wikipedia: same article).
    exclude_same_source: bool = True
    source_key: Literal["doc_id", "title"] = "doc_id"
    # The GME pool's index; kind and nlist must match gme_score's for the two stages to share one pool.
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(batch_size=8, shard_rows=256))

    def __post_init__(self) -> None:
        check_embedder("negatives", self.embedder, self.gme)
        check(
            self.num_negatives >= 1, "negatives", "num_negatives", f"must be >= 1 (got {self.num_negatives})"
        )
        check(
            0 <= self.min_negatives <= self.num_negatives,
            "negatives",
            "min_negatives",
            f"must be in 0..num_negatives (got {self.min_negatives})",
        )
        check(self.range_min >= 0, "negatives", "range_min", f"must be >= 0 (got {self.range_min})")
        check(
            self.search_k > self.range_min,
            "negatives",
            "search_k",
            f"must be > range_min, or no hit is ever eligible (got {self.search_k})",
        )
        check(
            self.range_max == 0 or self.range_min < self.range_max <= self.search_k,
            "negatives",
            "range_max",
            f"must be 0 or in range_min+1..search_k (got {self.range_max})",
        )
        for name in ("margin", "relative_margin"):
            value = getattr(self, name)
            check(value is None or value >= 0, "negatives", name, f"must be >= 0 or null (got {value})")
        check(
            self.relative_margin is None or self.relative_margin < 1,
            "negatives",
            "relative_margin",
            "must be < 1",
        )


class PoolKeys(NamedTuple):
    """What the exclusions compare for one passage (a tuple: built for every hit of every query)."""

    id: str
    doc_id: str | None = None
    # Exact-duplicate keys (content_hash, text_hash); any shared key makes a duplicate.
    hashes: tuple[str, ...] = ()
    # Same-source key (doc_id or title); None never matches.
    source: str | None = None


def mine(
    hits: Sequence[PoolKeys],
    scores: Sequence[float],
    positive: PoolKeys,
    pos_score: float,
    cfg: NegativesConfig,
) -> tuple[list[int], Counter]:
    """Choose negatives among one query's hits (in search order; rank = position + 1).

    Returns the chosen positions, best score first (ties keep search order), at most `num_negatives`,
    and how many hits each rule skipped (`positive`, `duplicate`, `same_source`, `rank_window`,
    `max_score`, `margin`, `relative_margin`, `min_score`); hits after the K-th pick are not looked at.
    """
    skipped: Counter = Counter()
    chosen: list[int] = []
    top = cfg.range_max or cfg.search_k
    relative = None if cfg.relative_margin is None else pos_score - abs(pos_score) * cfg.relative_margin
    ceiling = [
        ("max_score", cfg.max_score),
        ("margin", None if cfg.margin is None else pos_score - cfg.margin),
        ("relative_margin", relative),
    ]
    dup_keys = set(positive.hashes)
    for pos in sorted(range(len(hits)), key=lambda p: -scores[p]):
        if len(chosen) == cfg.num_negatives:
            break
        hit, score, rank = hits[pos], scores[pos], pos + 1
        if hit.id == positive.id or (hit.doc_id is not None and hit.doc_id == positive.doc_id):
            why = "positive"
        elif dup_keys.intersection(hit.hashes):
            why = "duplicate"
        elif cfg.exclude_same_source and hit.source is not None and hit.source == positive.source:
            why = "same_source"
        elif not cfg.range_min < rank <= top:
            why = "rank_window"
        else:
            why = next((name for name, limit in ceiling if limit is not None and score > limit), "")
            if not why and cfg.min_score is not None and score < cfg.min_score:
                why = "min_score"
        if why:
            skipped[why] += 1
        else:
            chosen.append(pos)
    return chosen, skipped


def decide(query: str, image_reason: str, in_pool: bool, found: int, min_negatives: int) -> tuple[str, str]:
    if not query.strip():
        return FILTERED, "filter:empty_query"
    if image_reason:
        return REJECTED, image_reason
    if not in_pool:
        return REJECTED, "error:source_not_in_pool"
    if found < min_negatives:
        return FILTERED, "filter:too_few_negatives"
    return OK, ""


class NegativesFn(GmeQueryFn):
    """Ray actor: encodes each shard's fused queries, searches the pool, mines, attaches the negatives."""

    config_cls: ClassVar[type] = NegativesConfig

    def __call__(self, table: pa.Table) -> pa.Table:
        n = table.num_rows
        queries, vectors, reasons = self.encode_queries(table)
        sources = self.pool.rows_of(table["doc_id"].to_pylist())
        live = [i for i in range(n) if queries[i].strip() and not reasons[i] and sources[i] is not None]
        cols: dict[str, list] = {name: [[] for _ in range(n)] for name in OUTPUT_TYPES}
        cols["num_negatives"], cols["neg_pos_score"] = [0] * n, [None] * n
        if live:
            self._mine(vectors, [sources[i] for i in live], live, cols)
        decided = [
            decide(
                queries[i],
                reasons[i],
                sources[i] is not None,
                cols["num_negatives"][i],
                self.cfg.min_negatives,
            )
            for i in range(n)
        ]
        table = self.drop_temp(table)
        for name, tp in OUTPUT_TYPES.items():
            table = table.append_column(name, pa.array(cols[name], tp))
        return set_status(table, [d[0] for d in decided], [d[1] for d in decided])

    def _mine(self, vectors: np.ndarray, pos_rows: list[int], live: list[int], cols: dict[str, list]) -> None:
        cfg = self.cfg
        scores, hits = self.pool.search(vectors[live], cfg.search_k, cfg.index.nprobe)
        pos_scores = [float(vectors[i] @ self.pool.vector(r)) for i, r in zip(live, pos_rows)]
        # IVF returns -1 where the probed lists hold fewer than k vectors.
        wanted = np.unique(np.concatenate([hits[hits >= 0], np.asarray(pos_rows, np.int64)]))
        keys = dict(zip(wanted.tolist(), self._keys(wanted)))
        picks: list[tuple[int, list[int], list[float], list[int]]] = []
        for j, i in enumerate(live):
            valid = [p for p in range(hits.shape[1]) if hits[j, p] >= 0]
            rows = [int(hits[j, p]) for p in valid]
            chosen, _ = mine(
                [keys[r] for r in rows],
                [float(scores[j, p]) for p in valid],
                keys[pos_rows[j]],
                pos_scores[j],
                cfg,
            )
            picks.append(
                (
                    i,
                    [rows[c] for c in chosen],
                    [float(scores[j, valid[c]]) for c in chosen],
                    [valid[c] + 1 for c in chosen],
                )
            )
            cols["neg_pos_score"][i] = pos_scores[j]
        chosen_rows = sorted({r for _, rows, _, _ in picks for r in rows})
        payload = dict(zip(chosen_rows, self.pool.rows_at(chosen_rows, PAYLOAD_COLUMNS).to_pylist()))
        for i, rows, row_scores, ranks in picks:
            got = [payload[r] for r in rows]
            cols["neg_ids"][i] = [g["id"] for g in got]
            cols["neg_doc_ids"][i] = [g["doc_id"] for g in got]
            cols["neg_texts"][i] = [g["text"] for g in got]
            cols["neg_titles"][i] = [g["title"] for g in got]
            cols["neg_images"][i] = [g["image"] for g in got]
            cols["neg_scores"][i], cols["neg_ranks"][i] = row_scores, ranks
            cols["num_negatives"][i] = len(rows)

    def _keys(self, rows: np.ndarray) -> list[PoolKeys]:
        meta = self.pool.rows_at(rows, KEY_COLUMNS)
        ids, doc_ids, exact, loose = (
            meta[c].to_pylist() for c in ("id", "doc_id", "content_hash", "text_hash")
        )
        sources = meta[self.cfg.source_key].to_pylist()
        return [
            PoolKeys(i, d, tuple(h for h in (c, t) if h), s or None)
            for i, d, c, t, s in zip(ids, doc_ids, exact, loose, sources)
        ]


class Negatives(GmeStage):
    name: ClassVar[str] = "negatives"
    config_cls: ClassVar[type] = NegativesConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id", "doc_id", "rewritten_query", "query_image")
    output_columns: ClassVar[tuple[str, ...]] = tuple(OUTPUT_TYPES)
    actor: ClassVar[type] = NegativesFn

