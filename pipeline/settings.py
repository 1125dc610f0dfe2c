"""The run config: top-level keys plus one section per stage of the chosen track (see tracks.py).

Sections are typed by the track: `pipeline: gme` makes `ingest:`, `doc2query:`... sections of their
stage's config dataclass; a key no section or top-level field knows is an error naming it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import _load_yaml, _origin_of, apply_overrides, build, check, to_dict
from pipeline.errors import PipelineConfigError
from pipeline.prompts import default_prompts_dir
from pipeline.tracks import TRACKS, sections


@dataclass(frozen=True)
class RayConfig:
    # None: the cluster of `ray job submit` (RAY_ADDRESS), else an embedded local Ray.
    address: str | None = None
    # Embedded Ray only.
    num_cpus: int | None = None
    object_store_mb: int = 512
    log_to_driver: bool = True
    # Seconds the run waits, before any work, for a cluster it connects to (an autoscaler adding nodes)
    # to be able to start every stage's worker pools (pipeline/scheduling.py); then it fails naming
    # each stage and what it lacks. 0: fail at once. An embedded Ray cannot grow: checked once.
    schedule_grace_s: float = 300.0

    def __post_init__(self) -> None:
        check(self.schedule_grace_s >= 0, "ray", "schedule_grace_s", f"must be >= 0 (got {self.schedule_grace_s})")


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    run_dir: str = "runs/run"
    pipeline: str = "gme"
    # None: every section of the track, in order.
    stages: tuple[str, ...] | None = None
    # Tiny models and dequantised packaged models are cached here.
    cache_dir: str = "~/.cache/fusegen"
    prompts_dir: str = str(default_prompts_dir())
    # Shared folder (path or URI) for the indexes stages declare, reused by every run pointing at it;
    # None keeps them in RUN_DIR/_index/.
    index_dir: str | None = None
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    # Section name -> stage config; filled with defaults for sections the YAML leaves out.
    sections: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.pipeline in TRACKS, "run", "pipeline", f"must be one of {', '.join(TRACKS)} (got {self.pipeline!r})")
        allowed = tuple(sections(self.pipeline))
        stages = allowed if self.stages is None else tuple(self.stages)
        object.__setattr__(self, "stages", stages)
        for name in stages:
            check(name in allowed, "run", "stages", f"has {name!r}, not a stage of pipeline {self.pipeline!r} {allowed}")
        order = [allowed.index(s) for s in stages]
        check(order == sorted(order) and len(set(order)) == len(order), "run", "stages", f"must follow the order {allowed}")
        check(bool(stages) and stages[0] == allowed[0], "run", "stages", f"must start with {allowed[0]}")
        check(stages[-1] == allowed[-1], "run", "stages", f"must end with {allowed[-1]}")
        filled = {name: cls.config_cls() for name, cls in sections(self.pipeline).items()}
        filled.update(self.sections)
        object.__setattr__(self, "sections", filled)

    def __getattr__(self, name: str) -> Any:
        # Sections read as attributes (config.ingest); only reached when no field has the name.
        if name.startswith("__") or name == "sections":
            raise AttributeError(name)
        try:
            return self.sections[name]
        except KeyError:
            raise AttributeError(f"RunConfig has no field or section {name!r}") from None

    def as_dict(self) -> dict:
        """Plain values as written to run.yaml: top-level keys, then one mapping per section."""
        values = to_dict(self)
        values.pop("sections")
        return {**values, **{name: to_dict(cfg) for name, cfg in self.sections.items()}}


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    values, origins = _load_yaml(Path(path))
    apply_overrides(values, origins, list(overrides or []))
    pipeline = values.get("pipeline", "gme")
    if pipeline not in TRACKS:
        raise PipelineConfigError(
            f"config: `pipeline` must be one of {', '.join(TRACKS)} (got {pipeline!r}; set in {_origin_of('pipeline', origins)})"
        )
    track = sections(pipeline)
    top_fields = {f.name for f in dataclasses.fields(RunConfig)} - {"sections"}
    unknown = sorted(set(values) - top_fields - set(track))
    if unknown:
        known = ", ".join(sorted(top_fields | set(track)))
        raise PipelineConfigError(
            f"config: `{unknown[0]}` is not a known key of pipeline {pipeline!r}; known keys here: {known} "
            f"(set in {_origin_of(unknown[0], origins)})"
        )
    built = {name: build(cls.config_cls, values.get(name), name, origins) for name, cls in track.items()}
    config = build(RunConfig, {k: v for k, v in values.items() if k in top_fields}, "", origins)
    try:
        config = dataclasses.replace(config, sections=built)
    except PipelineConfigError as exc:
        raise PipelineConfigError(f"{exc} (in {_origin_of('stages', origins)})") from None
    if "run_dir" not in values:
        config = dataclasses.replace(config, run_dir=f"runs/{config.name}")
    return config


def build_stages(config: RunConfig, context) -> list:
    track = sections(config.pipeline)
    stages = [track[name](config.sections[name], context, name) for name in config.stages]
    check_chain(stages)
    return stages


def check_chain(stages: list) -> None:
    """R6, static half: every stage's inputs are produced by a stage before it."""
    from pipeline.stage import check_columns

    produced: list[str] = []
    for stage in stages:
        check_columns(stage.name, stage.input_columns, produced)
        produced += list(stage.output_columns)
