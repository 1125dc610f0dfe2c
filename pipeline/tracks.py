"""The track registry: `pipeline: gme | megapairs` -> an ordered tuple of (config section, stage class).

A track names its config sections; the same stage class may serve under two sections (or in two
tracks) with different configs, and the section is the stage's name in the run dir, the manifests
and the fingerprints. A run config lists a subset of its track's sections in track order; it must
start with the track's first section and end with its last.

`megapairs` (DESIGN §1b): pool -> mine_pairs (its similarity views are declared indexes over the pool,
`mine_pairs.views`) -> describe -> instruct -> export (schema megapairs by default).
"""

from __future__ import annotations

from pipeline.stages.clip_filter import ClipFilter
from pipeline.stages.consistency import Consistency
from pipeline.stages.describe import Describe
from pipeline.stages.doc2query import Doc2Query
from pipeline.stages.entities import Entities
from pipeline.stages.export import Export, MegaPairsExport
from pipeline.stages.gme_score import GmeScore
from pipeline.stages.images import Images
from pipeline.stages.ingest import Ingest
from pipeline.stages.instruct import Instruct
from pipeline.stages.mine_pairs import MinePairs
from pipeline.stages.mp_pool import MegaPool
from pipeline.stages.negatives import Negatives

TRACKS: dict[str, tuple[tuple[str, type], ...]] = {}


def register_track(name: str, sections: tuple[tuple[str, type], ...]) -> None:
    """Add (or replace) a track. Section names must be unique within the track."""
    names = [s for s, _ in sections]
    if len(set(names)) != len(names):
        raise ValueError(f"track {name!r}: section names repeat: {names}")
    if not sections:
        raise ValueError(f"track {name!r} has no sections")
    TRACKS[name] = tuple(sections)


def sections(track: str) -> dict[str, type]:
    """Section -> stage class of a track, in track order."""
    return dict(TRACKS[track])


register_track(
    "gme",
    (
        ("ingest", Ingest),
        ("doc2query", Doc2Query),
        ("consistency", Consistency),
        ("entities", Entities),
        ("images", Images),
        ("clip_filter", ClipFilter),
        ("gme_score", GmeScore),
        ("negatives", Negatives),
        ("export", Export),
    ),
)

register_track(
    "megapairs",
    (
        ("pool", MegaPool),
        ("mine_pairs", MinePairs),
        ("describe", Describe),
        ("instruct", Instruct),
        ("export", MegaPairsExport),
    ),
)
