"""MegaPairs pair mining as pure functions (no Ray, no faiss): one query's neighbours in, its pairs out.

For each view, the query's neighbours (pool id, image sha256, cosine similarity; any order) are kept
when lo < similarity < hi (the open band; MegaPairs: (0.8, 0.96), too close = a duplicate, too far =
unrelated; compared in float32, faiss's precision), never the query itself (`self`) nor an image with
the query's sha256 (`duplicate`); the rest count as `above_band` (>= hi) or `below_band` (<= lo).
Skips are counted per (view, neighbour).

Views are merged: one pair per target, carrying the views (config order) whose band it fell in and
their scores. Up to `pairs_per_query` targets are taken round-robin over the views, each view's
candidates best first (ties by id), a target already taken skipped; the order of the views in the
round-robin is a permutation drawn from the query's recorded `mine_seed`, so a rerun gives the same
pairs and another `seed` another draw.

`mirrored: drop` keeps one direction of each pair: the one whose query id sorts first (Python string
order). A query only considers targets whose id sorts after its own, before the cap, so the kept
direction does not depend on the other query's cap. `keep` (the paper's choice) keeps both.

Hard negatives for a pair: the query's other retrieved images from every view, out-of-band ones
included, each at its best score over the views, best first (ties by id); never the query, the
target, an image with the query's or the target's sha256, nor a second image with a sha256 already
taken. Fewer than `min_negatives` -> the pair is `filter:too_few_negatives`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

SKIP_CAUSES = ("self", "duplicate", "above_band", "below_band")


class Hit(NamedTuple):
    """One retrieved pool image: its pool id, the sha256 of its image (None: unknown) and the cosine."""

    id: str
    sha: str | None
    score: float


@dataclass(frozen=True)
class MineSettings:
    pairs_per_query: int = 3
    num_negatives: int = 5
    min_negatives: int = 5
    mirrored: str = "keep"
    seed: int = 0


@dataclass
class Pair:
    target: Hit
    # The views (config order) whose band the target fell in, and its score under each.
    views: list[str]
    scores: list[float]
    rank: int
    negatives: list[Hit] = field(default_factory=list)
    reason: str = ""


@dataclass
class QueryResult:
    seed: int
    pairs: list[Pair]
    skips: dict[str, int]


def mine_seed(seed: int, query_id: str) -> int:
    """The query's recorded seed: BLAKE2b of (seed, query id), a non-negative int64."""
    digest = hashlib.blake2b(f"{seed}\x1f{query_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def best_first(hits: Sequence[Hit]) -> list[Hit]:
    return sorted(hits, key=lambda h: (-h.score, h.id))


def in_band(
    query_id: str,
    query_sha: str | None,
    hits: Sequence[Hit],
    band: tuple[float, float],
    skips: dict[str, int],
) -> list[Hit]:
    """The hits strictly inside the band, best first; every other hit counted in `skips` by cause."""
    # Compared in float32, the precision faiss scores in: a similarity of exactly an edge (0.8 as float32)
    # is outside the band, as the open interval says, not inside it by a rounding error.
    lo, hi = (float(np.float32(edge)) for edge in band)
    kept = []
    for hit in hits:
        score = float(np.float32(hit.score))
        if hit.id == query_id:
            cause = "self"
        elif query_sha is not None and hit.sha == query_sha:
            cause = "duplicate"
        elif score >= hi:
            cause = "above_band"
        elif score <= lo:
            cause = "below_band"
        else:
            kept.append(hit)
            continue
        skips[cause] += 1
    return best_first(kept)


def round_robin(candidates: Sequence[Sequence[str]], cap: int, seed: int) -> list[str]:
    """Up to `cap` distinct ids, one per view in turn (the views' order drawn from `seed`), each view's
    list taken in its own order, an id already taken skipped."""
    order = list(range(len(candidates)))
    random.Random(seed).shuffle(order)
    pos = [0] * len(candidates)
    taken: list[str] = []
    seen: set[str] = set()
    while len(taken) < cap:
        progressed = False
        for v in order:
            lst = candidates[v]
            while pos[v] < len(lst) and lst[pos[v]] in seen:
                pos[v] += 1
            if pos[v] < len(lst):
                taken.append(lst[pos[v]])
                seen.add(lst[pos[v]])
                pos[v] += 1
                progressed = True
                if len(taken) == cap:
                    break
        if not progressed:
            break
    return taken


def ranked(hits: Iterable[Hit]) -> list[Hit]:
    """The hits of every view as one list: each id once, at its best score, best first (ties by id)."""
    best: dict[str, Hit] = {}
    for hit in hits:
        if hit.id not in best or hit.score > best[hit.id].score:
            best[hit.id] = hit
    return best_first(list(best.values()))


def pick_negatives(
    query_id: str, query_sha: str | None, target: Hit, ranked_hits: Iterable[Hit], num: int
) -> list[Hit]:
    """Up to `num` hard negatives, taken in order from the query's `ranked` retrieved images (read only
    as far as needed, so a caller may pass a lazy sequence)."""
    banned = {s for s in (query_sha, target.sha) if s is not None}
    out: list[Hit] = []
    if num <= 0:
        return out
    for hit in ranked_hits:
        if hit.id in (query_id, target.id) or (hit.sha is not None and hit.sha in banned):
            continue
        out.append(hit)
        if hit.sha is not None:
            banned.add(hit.sha)
        if len(out) >= num:
            break
    return out


def select_pairs(
    query_id: str,
    query_sha: str | None,
    kept: Sequence[tuple[str, Sequence[Hit]]],
    ranked_hits: Iterable[Hit],
    skips: dict[str, int],
    settings: MineSettings,
) -> QueryResult:
    """The query's pairs from each view's (name, in-band hits best first) and its ranked retrieved images."""
    seed = mine_seed(settings.seed, query_id)
    found: dict[str, tuple[Hit, list[str], list[float]]] = {}
    lists: list[list[str]] = []
    for name, hits in kept:
        if settings.mirrored == "drop":
            hits = [h for h in hits if h.id > query_id]
        for hit in hits:
            entry = found.setdefault(hit.id, (hit, [], []))
            entry[1].append(name)
            entry[2].append(hit.score)
        lists.append([h.id for h in hits])
    targets = round_robin(lists, settings.pairs_per_query, seed)
    pool = ranked_hits if isinstance(ranked_hits, Sequence) else list(ranked_hits)
    pairs = []
    for rank, target_id in enumerate(targets):
        target, names, scores = found[target_id]
        negatives = pick_negatives(query_id, query_sha, target, pool, settings.num_negatives)
        reason = "filter:too_few_negatives" if len(negatives) < settings.min_negatives else ""
        pairs.append(Pair(target, names, scores, rank, negatives, reason))
    return QueryResult(seed, pairs, skips)


def mine_query(
    query_id: str,
    query_sha: str | None,
    views: Sequence[tuple[str, tuple[float, float], Sequence[Hit]]],
    settings: MineSettings,
) -> QueryResult:
    """The query's pairs, from each view's (name, band, hits), views in config order."""
    skips = dict.fromkeys(SKIP_CAUSES, 0)
    kept = [(name, in_band(query_id, query_sha, hits, band, skips)) for name, band, hits in views]
    return select_pairs(
        query_id, query_sha, kept, ranked(h for _, _, hits in views for h in hits), skips, settings
    )


# Per-slot classes of `classify`: a search slot IVF left empty, in band, then the skip causes in order.
EMPTY, IN_BAND = -1, 0
SELF, DUPLICATE, ABOVE, BELOW = 1, 2, 3, 4


def classify(
    hit_ids: np.ndarray,
    hit_shas: np.ndarray,
    scores: np.ndarray,
    query_ids: np.ndarray,
    query_shas: np.ndarray,
    band: tuple[float, float],
) -> np.ndarray:
    """`in_band` for a whole block of queries at once, on integer codes: (queries, k) hit id and sha
    codes (-1: empty slot / unknown sha), float32 scores, (queries,) query id and sha codes. Returns
    (queries, k) int8 classes (EMPTY, IN_BAND, SELF, DUPLICATE, ABOVE, BELOW), the same rules."""
    lo, hi = np.float32(band[0]), np.float32(band[1])
    scores = np.asarray(scores, np.float32)
    out = np.full(hit_ids.shape, IN_BAND, np.int8)
    out[scores <= lo] = BELOW
    out[scores >= hi] = ABOVE
    qsha = query_shas[:, None]
    out[(hit_shas == qsha) & (qsha >= 0)] = DUPLICATE
    out[hit_ids == query_ids[:, None]] = SELF
    out[hit_ids < 0] = EMPTY
    return out
