"""Stage registry: name -> class, and the stage lists of each pipeline track."""

from __future__ import annotations

from pipeline.stages.consistency import Consistency
from pipeline.stages.doc2query import Doc2Query
from pipeline.stages.entities import Entities
from pipeline.stages.export import Export
from pipeline.stages.ingest import Ingest

STAGES = {cls.name: cls for cls in (Ingest, Doc2Query, Consistency, Entities, Export)}

# Stages each track may run, in order; a run config lists a prefix-respecting subset ending in export.
TRACKS = {"gme": ("ingest", "doc2query", "consistency", "entities", "export")}
