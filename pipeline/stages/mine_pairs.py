"""mine_pairs: MegaPairs (query image, target image) pairs from the pool's similarity views, with hard
negatives (MegaPairs §3.1; the rules are pipeline/mining.py's).

Every pool image is a query. Each view (`views`, declared indexes built by pipeline/stages/mp_views.py)
looks up the query's own vector in its index (a caption-less query has none in a text view: that view
is skipped for it), searches `search_k + 1` neighbours (the query finds itself), and the pure mining
keeps the in-band ones, merges the views, takes up to `pairs_per_query` targets round-robin under the
query's `mine_seed` and picks `num_negatives` hard negatives per pair (`mirrored: drop` keeps a pair
only in the direction whose query id sorts first). The search and the per-hit classification run a
shard at a time on arrays (pipeline/stages/mine_search.py). Targets' and negatives' image references,
captions, licenses and origins come from the view indexes' memory-mapped rows.arrow. The stage needs
no model and no GPU: the views' embed side stages do (each view's own `resources`).

Input columns (the `pool` section): id, image, caption, license, origin. Output: one unit per pair
(variable fan-out), columns `id` (`<query_id>~<target_id>`), query_id, query_image, query_caption,
query_license, query_origin, target_id, target_image, target_caption, target_license, target_origin,
pair_views (list<string>, config order), pair_scores (list<float32>, aligned), pair_rank (int32),
neg_ids, neg_images (list<IMAGE_REF>), neg_scores (list<float32>, best first), mine_seed (int64),
mine_skips (struct of int32 self, duplicate, above_band, below_band: the query's skips, summed over
views). Dropped units: `filter:no_pair_in_band` (one per query without a pair; id = the query id),
`filter:too_few_negatives` (a pair with fewer than `min_negatives`; its negatives kept for inspection).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import pyarrow as pa

from pipeline.config import build, check, to_dict
from pipeline.io.image_store import IMAGE_REF
from pipeline.io.indexes import IndexHandle, IndexSpec
from pipeline.mining import SKIP_CAUSES, MineSettings, QueryResult
from pipeline.scheduling import Phase
from pipeline.stage import (
    FILTERED,
    NROWS,
    OK,
    PARENT,
    SHARD,
    SLOT,
    SRC,
    Resources,
    Stage,
    StageConfig,
    actor_map,
    actor_pool,
    set_status,
)
from pipeline.stages.mine_search import META, mine_shard, read_meta
from pipeline.stages.mp_views import ViewConfig, resolve_view_model, view_spec

MINE_SKIPS = pa.struct([(cause, pa.int32()) for cause in SKIP_CAUSES])
OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("query_id", pa.string()),
        ("query_image", IMAGE_REF),
        ("query_caption", pa.string()),
        ("query_license", pa.string()),
        ("query_origin", pa.string()),
        ("target_id", pa.string()),
        ("target_image", IMAGE_REF),
        ("target_caption", pa.string()),
        ("target_license", pa.string()),
        ("target_origin", pa.string()),
        ("pair_views", pa.list_(pa.string())),
        ("pair_scores", pa.list_(pa.float32())),
        ("pair_rank", pa.int32()),
        ("neg_ids", pa.list_(pa.string())),
        ("neg_images", pa.list_(IMAGE_REF)),
        ("neg_scores", pa.list_(pa.float32())),
        ("mine_seed", pa.int64()),
        ("mine_skips", MINE_SKIPS),
    ]
)
_META = META


def _default_views() -> tuple[ViewConfig, ...]:
    return (ViewConfig(name="clip_image", kind="clip_image", model="tiny:clip"),)


@dataclass(frozen=True)
class MinePairsConfig(StageConfig):
    views: tuple[ViewConfig, ...] = dataclasses.field(default_factory=_default_views)
    # Neighbours each view retrieves per query (the query itself comes on top).
    search_k: int = 50
    pairs_per_query: int = 3
    num_negatives: int = 5
    # Pairs with fewer negatives are `filter:too_few_negatives`; None = num_negatives, 0 keeps every pair.
    min_negatives: int | None = None
    # keep: both directions of a pair (the paper); drop: only the one whose query id sorts first.
    mirrored: Literal["keep", "drop"] = "keep"
    # Base of each query's mine_seed (the round-robin order over views).
    seed: int = 0
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(shard_rows=256))

    def __post_init__(self) -> None:
        check(len(self.views) >= 1, "mine_pairs", "views", "must list at least one view (name, kind, model)")
        for view in self.views:
            check(
                isinstance(view, ViewConfig),
                "mine_pairs",
                "views",
                f"items must be view mappings (got {view!r})",
            )
        names = [v.name for v in self.views]
        dups = sorted({n for n in names if names.count(n) > 1})
        check(
            not dups,
            "mine_pairs",
            "views",
            f"two views share the name {', '.join(map(repr, dups))}; names must be unique",
        )
        check(self.search_k >= 1, "mine_pairs", "search_k", f"must be >= 1 (got {self.search_k})")
        check(
            self.pairs_per_query >= 1,
            "mine_pairs",
            "pairs_per_query",
            f"must be >= 1 (got {self.pairs_per_query})",
        )
        check(
            self.num_negatives >= 0, "mine_pairs", "num_negatives", f"must be >= 0 (got {self.num_negatives})"
        )
        if self.min_negatives is not None:
            check(
                0 <= self.min_negatives <= self.num_negatives,
                "mine_pairs",
                "min_negatives",
                f"must be in 0..num_negatives ({self.num_negatives}) (got {self.min_negatives})",
            )
        check(
            self.mirrored in ("keep", "drop"),
            "mine_pairs",
            "mirrored",
            f"must be keep or drop (got {self.mirrored!r})",
        )

    def settings(self) -> MineSettings:
        floor = self.num_negatives if self.min_negatives is None else self.min_negatives
        return MineSettings(self.pairs_per_query, self.num_negatives, floor, self.mirrored, self.seed)


class MinePairsFn:
    """Ray actor: opens every view index once; a shard of pool rows in, its pair units out."""

    def __init__(self, cfg: dict, indexes: dict[str, IndexHandle]) -> None:
        self.cfg = build(MinePairsConfig, cfg, "mine_pairs", {})
        self.settings = self.cfg.settings()
        self.pools = {view.name: indexes[view.name].open() for view in self.cfg.views}

    def __call__(self, table: pa.Table) -> pa.Table:
        ids = table["id"].to_pylist()
        shas = [_sha(ref) for ref in table["image"].to_pylist()]
        results, book = mine_shard(self.cfg.views, self.pools, ids, shas, self.cfg.search_k, self.settings)
        chosen = {book.code[h.id] for r in results for p in r.pairs for h in (p.target, *p.negatives)}
        meta = read_meta([self.pools[v.name] for v in self.cfg.views], book, chosen)
        return explode(table, results, meta)


def _sha(ref: dict | None) -> str | None:
    return ref["sha256"] if ref else None


def explode(table: pa.Table, results: list[QueryResult], meta: dict[str, dict]) -> pa.Table:
    """One unit per pair (or one filtered unit per query without a pair), with `_k`, `_n`, statuses."""
    query = {c: table[c].to_pylist() if c in table.column_names else [None] * table.num_rows for c in _META}
    cols: dict[str, list] = {name: [] for name in OUTPUT_SCHEMA.names}
    take, slots, counts, statuses, reasons = [], [], [], [], []
    for i, result in enumerate(results):
        units = result.pairs or [None]
        for k, pair in enumerate(units):
            take.append(i)
            slots.append(k)
            counts.append(len(units))
            q = {c: query[c][i] for c in _META}
            t = meta.get(pair.target.id, {}) if pair else {}
            negs = pair.negatives if pair else []
            row = {
                "id": f"{q['id']}~{pair.target.id}" if pair else q["id"],
                "query_id": q["id"],
                "query_image": q["image"],
                "query_caption": q["caption"],
                "query_license": q["license"],
                "query_origin": q["origin"],
                "target_id": pair.target.id if pair else None,
                "target_image": t.get("image"),
                "target_caption": t.get("caption"),
                "target_license": t.get("license"),
                "target_origin": t.get("origin"),
                "pair_views": pair.views if pair else [],
                "pair_scores": pair.scores if pair else [],
                "pair_rank": pair.rank if pair else None,
                "neg_ids": [h.id for h in negs],
                "neg_images": [meta.get(h.id, {}).get("image") for h in negs],
                "neg_scores": [h.score for h in negs],
                "mine_seed": result.seed,
                "mine_skips": result.skips,
            }
            for name in OUTPUT_SCHEMA.names:
                cols[name].append(row[name])
            reason = pair.reason if pair else "filter:no_pair_in_band"
            statuses.append(FILTERED if reason else OK)
            reasons.append(reason)
    index = pa.array(take, pa.int64())
    internal = [c for c in (SHARD, SRC, PARENT) if c in table.column_names]
    out = pa.Table.from_pydict(cols, schema=OUTPUT_SCHEMA)
    for name in internal:
        out = out.append_column(name, table[name].take(index))
    out = out.append_column(SLOT, pa.array(slots, pa.int32())).append_column(
        NROWS, pa.array(counts, pa.int32())
    )
    return set_status(out, statuses, reasons)


class MinePairs(Stage):
    name: ClassVar[str] = "mine_pairs"
    config_cls: ClassVar[type] = MinePairsConfig
    input_columns: ClassVar[tuple[str, ...]] = _META
    output_columns: ClassVar[tuple[str, ...]] = tuple(OUTPUT_SCHEMA.names)

    @property
    def fanout(self) -> int | None:
        return None

    def prepare(self) -> None:
        self.resolved = {v.name: resolve_view_model(v, self.context.cache_dir) for v in self.config.views}

    def models(self) -> dict[str, str]:
        return {f"view:{name}": identity for name, (_, identity) in self.resolved.items()}

    def indexes(self) -> tuple[IndexSpec, ...]:
        """One index per view over the pool section's output (mp_views.view_spec)."""
        return tuple(
            view_spec(v, self.context, *self.resolved[v.name], stage=self.name) for v in self.config.views
        )

    def schedule(self) -> tuple[Phase, ...]:
        """Each view's index build (one after another), then the MinePairsFn actors."""
        views = [p for v in self.config.views for p in view_spec(v, self.context, "", "", self.name).embed.schedule()]
        return (*views, Phase(self.name, (actor_pool("MinePairsFn", self.config.resources, self.name),)))

    def apply(self, ds):
        kwargs = {"cfg": to_dict(self.config), "indexes": dict(self.bound_indexes)}
        return actor_map(ds, MinePairsFn, kwargs, self.config.resources)
