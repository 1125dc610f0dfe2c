"""Stage classes by their own name (the track registry, pipeline/tracks.py, orders them per track)."""

from __future__ import annotations

from pipeline.stages.clip_filter import ClipFilter
from pipeline.stages.consistency import Consistency
from pipeline.stages.doc2query import Doc2Query
from pipeline.stages.entities import Entities
from pipeline.stages.export import Export
from pipeline.stages.gme_score import GmeScore
from pipeline.stages.images import Images
from pipeline.stages.ingest import Ingest
from pipeline.stages.negatives import Negatives

STAGES = {cls.name: cls for cls in (Ingest, Doc2Query, Consistency, Entities, Images, ClipFilter, GmeScore, Negatives, Export)}
