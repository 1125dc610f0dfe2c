"""The run config: top-level keys plus one section per stage, loaded from YAML (see config.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.config import _load_yaml, apply_overrides, build, check
from pipeline.errors import PipelineConfigError
from pipeline.prompts import default_prompts_dir
from pipeline.stages import STAGES, TRACKS
from pipeline.stages.consistency import ConsistencyConfig
from pipeline.stages.doc2query import Doc2QueryConfig
from pipeline.stages.entities import EntitiesConfig
from pipeline.stages.export import ExportConfig
from pipeline.stages.ingest import IngestConfig


@dataclass(frozen=True)
class RayConfig:
    # None: the cluster of `ray job submit` (RAY_ADDRESS), else an embedded local Ray.
    address: str | None = None
    # Embedded Ray only.
    num_cpus: int | None = None
    object_store_mb: int = 512
    log_to_driver: bool = True


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    run_dir: str = "runs/run"
    pipeline: Literal["gme"] = "gme"
    stages: tuple[str, ...] = ("ingest", "doc2query", "consistency", "entities", "export")
    # Tiny models and dequantised packaged models are cached here.
    cache_dir: str = "~/.cache/fusegen"
    prompts_dir: str = str(default_prompts_dir())
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    ingest: IngestConfig = dataclasses.field(default_factory=IngestConfig)
    doc2query: Doc2QueryConfig = dataclasses.field(default_factory=Doc2QueryConfig)
    consistency: ConsistencyConfig = dataclasses.field(default_factory=ConsistencyConfig)
    entities: EntitiesConfig = dataclasses.field(default_factory=EntitiesConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        allowed = TRACKS[self.pipeline]
        for name in self.stages:
            check(name in allowed, "run", "stages", f"has {name!r}, not a stage of pipeline {self.pipeline!r} {allowed}")
        order = [allowed.index(s) for s in self.stages]
        check(order == sorted(order) and len(set(order)) == len(order), "run", "stages", f"must follow the order {allowed}")
        check(bool(self.stages) and self.stages[0] == "ingest", "run", "stages", "must start with ingest")
        check(self.stages[-1] == "export", "run", "stages", "must end with export")


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    values, origins = _load_yaml(Path(path))
    apply_overrides(values, origins, list(overrides or []))
    config = build(RunConfig, values, "", origins)
    if "run_dir" not in values:
        config = dataclasses.replace(config, run_dir=f"runs/{config.name}")
    return config


def build_stages(config: RunConfig, context) -> list:
    stages = []
    for name in config.stages:
        if name not in STAGES:
            raise PipelineConfigError(f"config: unknown stage {name!r}; known: {', '.join(STAGES)}")
        stages.append(STAGES[name](getattr(config, name), context))
    check_chain(stages)
    return stages


def check_chain(stages: list) -> None:
    """R6, static half: every stage's inputs are produced by a stage before it."""
    from pipeline.stage import check_columns

    produced: list[str] = []
    for stage in stages:
        check_columns(stage.name, stage.input_columns, produced)
        produced += list(stage.output_columns)
