"""Stage classes by their own name (the track registry, pipeline/tracks.py, orders them per track).

`STAGES` is built on first use: importing one stage module (as every Ray worker that runs a stage's
function does) does not import the others and their model libraries.
"""

from __future__ import annotations

import importlib
from typing import Any

# Stage name -> (module under pipeline.stages, class).
_CLASSES = {
    "ingest": ("ingest", "Ingest"), "doc2query": ("doc2query", "Doc2Query"), "consistency": ("consistency", "Consistency"),
    "entities": ("entities", "Entities"), "images": ("images", "Images"), "clip_filter": ("clip_filter", "ClipFilter"),
    "gme_score": ("gme_score", "GmeScore"), "negatives": ("negatives", "Negatives"), "export": ("export", "Export"),
    "describe": ("describe", "Describe"), "instruct": ("instruct", "Instruct"), "pool": ("mp_pool", "MegaPool"),
    "mine_pairs": ("mine_pairs", "MinePairs"),
}


def __getattr__(name: str) -> Any:
    if name != "STAGES":
        raise AttributeError(f"module 'pipeline.stages' has no attribute {name!r}")
    stages = {n: getattr(importlib.import_module(f"pipeline.stages.{m}"), c) for n, (m, c) in _CLASSES.items()}
    globals()["STAGES"] = stages
    return stages
