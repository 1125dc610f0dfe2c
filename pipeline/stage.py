"""The stage contract (STYLE R3-R9) and the column bookkeeping every stage shares.

A stage is a class with a frozen dataclass config, declared `input_columns` / `output_columns`, and
`apply(ds) -> ds` that only describes Ray Data transforms. The runner feeds `apply` a dataset whose
blocks are whole shards and whose rows carry the internal columns below; a stage keeps them and sets
`_status` / `_reason` instead of filtering, so every dropped row is counted and written with a reason.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from pipeline.columns import (  # noqa: F401 - re-exported: stages import these from here
    FILTERED,
    INTERNAL,
    NROWS,
    OK,
    PARENT,
    REASON,
    REJECTED,
    SHARD,
    SLOT,
    SPLIT,
    SRC,
    STATUS,
    mark_all_ok,
    set_status,
    status_columns,
)
from pipeline.config import check
from pipeline.errors import StageInputError
from pipeline.io.dedup import DedupRule
from pipeline.scheduling import ActorPool, Phase

# CPUs asked for by the light glue tasks around a model (shard reads, prompt rendering, parsing).
# Zero, so they always schedule beside model actors that hold every CPU: on a 2-CPU cluster two
# 1-CPU actors plus a 0.25-CPU read task deadlock (nothing reaches the actors).
GLUE_CPUS = 0
# ...and at most this many of each glue step at once: a 0-CPU task has no resource limit, so Ray
# Data would otherwise start a worker process (~100-200 MB each) per pending shard. Measured on
# 100k rows / 2 CPUs: 17 workers and 2.9 GiB PSS uncapped (docs/benchmarks.md).
GLUE_TASKS = 2


def glue_map(ds, fn, **kwargs):
    """`map_batches` for a light glue step: one whole block per call, 0 CPUs, GLUE_TASKS at most."""
    import ray.data

    kwargs.setdefault("batch_size", None)
    kwargs.setdefault("batch_format", "pyarrow")
    return ds.map_batches(fn, num_cpus=GLUE_CPUS, compute=ray.data.TaskPoolStrategy(size=GLUE_TASKS), **kwargs)


# How many shards the stage whose plan is being built will be given (set by the runner around
# `Stage.apply`); None outside a run (tests calling `apply` directly).
_SHARDS_PENDING: contextvars.ContextVar[int | None] = contextvars.ContextVar("shards_pending", default=None)


@contextlib.contextmanager
def shards_pending(count: int) -> Iterator[None]:
    """The runner's side of `pool_size`: while a stage's plan is built, it will get `count` shards."""
    token = _SHARDS_PENDING.set(count)
    try:
        yield
    finally:
        _SHARDS_PENDING.reset(token)


def pool_size(resources: Resources) -> int:
    """Actors (or engine replicas) to start for a stage: `resources.concurrency`, but never more than the
    shards it will get. A shard is one call of one actor, so an actor beyond that count would only load
    its model (tens of seconds on CPU, a GPU on a cluster) and wait."""
    pending = _SHARDS_PENDING.get()
    return resources.concurrency if pending is None else max(1, min(resources.concurrency, pending))


def actor_map(ds, fn_cls: type, kwargs: dict, resources: Resources, num_gpus: float | None = None):
    """`map_batches` through a fixed pool of `pool_size(resources)` actors, each holding a model.

    One call per block = one shard (batch_size=None): batches never mix shards, so a rerun of a
    shard sees exactly the inputs of the first run and a greedy model gives the same output.
    """
    import ray.data

    from pipeline import faults

    request, actors = actor_request(resources, num_gpus), pool_size(resources)
    if faults.active():
        # A fault plan may kill this actor mid-batch (tests/e2e/test_fault_resume.py); off otherwise.
        fn_cls, kwargs = faults.FaultyFn, {"_fault_inner": fn_cls, **kwargs}
    return ds.map_batches(
        fn_cls,
        fn_constructor_kwargs=kwargs,
        batch_size=None,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=actors, max_size=actors),
        num_cpus=request.pop("CPU"),
        num_gpus=request.pop("GPU", 0.0),
        **({"resources": request} if request else {}),
    )


def actor_request(resources: Resources, num_gpus: float | None = None) -> dict[str, float]:
    """What one `actor_map` actor asks Ray for: CPUs, GPUs if any (`num_gpus` overrides the config's)
    and the custom resources."""
    gpus = resources.num_gpus if num_gpus is None else num_gpus
    return {"CPU": float(resources.num_cpus), **({"GPU": float(gpus)} if gpus else {}), **resources.custom}


def actor_pool(role: str, resources: Resources, knob: str, num_gpus: float | None = None) -> ActorPool:
    """The pool `actor_map` starts with these arguments, for the plan (`Stage.schedule`); `knob` is the
    config section whose `resources` set it."""
    n = resources.concurrency
    return ActorPool(f"{role} actor", (actor_request(resources, num_gpus),), n, n,
                     knob=f"`{knob}.resources.num_gpus` / `num_cpus` / `custom`",
                     scale=f"`{knob}.resources.concurrency`")


def task_pool(
    role: str, resources: Resources, knob: str, num_cpus: float | None = None, custom: bool = True
) -> ActorPool:
    """Model-less Ray tasks at `resources.num_cpus` (or `num_cpus`), with the custom resources unless
    `custom` is False: no fixed pool, but one must fit a node."""
    cpus = resources.num_cpus if num_cpus is None else num_cpus
    extra = resources.custom if custom else {}
    return ActorPool(f"{role} task", ({"CPU": float(cpus), **extra},), 1, 1,
                     knob=f"`{knob}.resources.num_cpus` / `custom`")


@dataclass(frozen=True)
class Resources:
    """How a stage runs, not what it computes: these fields are left out of the fingerprint.

    `shard_rows` is the unit of resume (a crash loses at most the shards in flight); it is part of
    the fingerprint because it decides the shard ids.
    """

    # How it runs, not what it computes: left out of the fingerprint (shard_rows stays in).
    OPERATIONAL: ClassVar[frozenset] = frozenset(
        {"num_cpus", "num_gpus", "concurrency", "batch_size", "stall_timeout_s", "custom"}
    )

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # Actor-pool size for model stages (max actors; never more than the stage's shards, `pool_size`).
    concurrency: int = 1
    # Rows per model call inside a shard (the engine's batch).
    batch_size: int = 8
    shard_rows: int = 256
    # Seconds the driver waits for the stage's next finished block (one shard) before it stops the
    # stage as hung (StageStalledError; committed shards are kept). Must cover model loading. 0 = off.
    # The only hang guard for the vllm backend, whose ray.data.llm stage has no per-request timeout.
    stall_timeout_s: float = 0.0
    # Custom Ray resources each model actor asks for, e.g. {"model_node": 1} to place the actors on
    # nodes started with `ray start --resources '{"model_node": 4}'`.
    custom: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.num_cpus >= 0, "resources", "num_cpus", f"must be >= 0 (got {self.num_cpus})")
        check(self.num_gpus >= 0, "resources", "num_gpus", f"must be >= 0 (got {self.num_gpus})")
        check(self.concurrency >= 1, "resources", "concurrency", f"must be >= 1 (got {self.concurrency})")
        check(self.batch_size >= 1, "resources", "batch_size", f"must be >= 1 (got {self.batch_size})")
        check(self.shard_rows >= 1, "resources", "shard_rows", f"must be >= 1 (got {self.shard_rows})")
        check(self.stall_timeout_s >= 0, "resources", "stall_timeout_s", f"must be >= 0 (got {self.stall_timeout_s})")
        bad = {k: v for k, v in self.custom.items() if not isinstance(v, (int, float)) or v <= 0}
        check(not bad, "resources", "custom", f"values must be numbers > 0 (got {bad})")

    def remote_args(self) -> dict:
        """Ray remote arguments beyond CPUs and GPUs: the custom resources, if any."""
        return {"resources": dict(self.custom)} if self.custom else {}


@dataclass(frozen=True)
class StageConfig:
    """Base for stage configs; subclasses add their knobs with defaults that run the demo."""

    resources: Resources = dataclasses.field(default_factory=Resources)

    @classmethod
    def from_dict(cls, values: dict) -> StageConfig:
        """Rebuild a config from `to_dict` output (how configs travel to Ray tasks and actors)."""
        from pipeline.config import build

        return build(cls, values, cls.__name__, {})

    def semantic_dict(self) -> dict:
        """Fields that change the output (the fingerprint input): every field except those a config
        class lists in its `OPERATIONAL` class attribute (resources, timeouts, retries...)."""
        return semantic_values(self)


def semantic_values(obj: Any) -> Any:
    from pipeline.config import to_dict

    if dataclasses.is_dataclass(obj):
        skip = getattr(type(obj), "OPERATIONAL", frozenset())
        return {f.name: semantic_values(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in skip}
    if isinstance(obj, (list, tuple)):
        # A list of sub-configs (mine_pairs.views): each item leaves out its own operational fields too.
        return [semantic_values(v) for v in obj]
    return to_dict(obj)


@dataclass(frozen=True)
class StageOutput:
    """A committed stage output the runner hands to a later stage that declared it as an input."""

    section: str
    fingerprint: str
    # Part files (full paths inside the run filesystem), in shard order.
    parts: tuple[str, ...]


@dataclass(frozen=True)
class BlockStep:
    """One per-block function of a task stage: `fn(table, **kwargs) -> table`, run inside a Ray task."""

    fn: Any
    kwargs: dict = dataclasses.field(default_factory=dict)


class Stage(abc.ABC):
    """Base class. Subclasses set the class attributes and implement `apply`, or `task_steps` for a
    stage that is plain functions over blocks (no model actor).

    Every hook the runner calls is declared here with its default (R33): the runner never probes a
    stage with hasattr/getattr. `name` is the config section the stage runs under (the class's own
    name unless a track registers the class under another section).
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[StageConfig]]
    input_columns: ClassVar[tuple[str, ...]] = ()
    output_columns: ClassVar[tuple[str, ...]] = ()
    # Prompt files (relative to prompts/) whose bytes enter the fingerprint.
    prompt_files: ClassVar[tuple[str, ...]] = ()
    # Earlier stages' outputs this stage reads besides its upstream: local name -> config section.
    inputs: ClassVar[dict[str, str]] = {}
    # Commit shards strictly in shard order (dedup keeping the first).
    ordered_commit: ClassVar[bool] = False
    # Drop repeated content and reused ids across the stage's whole output, the first occurrence in shard
    # order kept (io/dedup.py; the keys from `dedup_keys`); None: no dedup. Needs `ordered_commit`.
    dedup: ClassVar[DedupRule | None] = None
    # File-name prefix of the committed parts (`datasets` infers the split from `train-*.parquet`).
    part_prefix: ClassVar[str] = "part"

    def __init__(self, config: StageConfig, context: Any, section: str | None = None) -> None:
        self.config = config
        self.context = context
        if section:
            self.name = section
        self.bound_inputs: dict[str, StageOutput] = {}
        self.bound_indexes: dict[str, Any] = {}

    @property
    def fanout(self) -> int | None:
        """Units per input row: a fixed number (doc2query asks for N queries per passage), or None for
        a variable fan-out, where the stage sets `_n` (units of that input row) on every unit."""
        return 1

    def models(self) -> dict[str, str]:
        """Model role -> resolved model identity, for the manifest and the card."""
        return {}

    def prepare(self) -> None:
        """Driver-side work before any stage runs (resolve models, validate prompts); no heavy loads."""

    def input_identity(self) -> dict:
        """What identifies the stage's external inputs (files it reads), for the fingerprint."""
        return {}

    def changed_reads(self, read: list[dict]) -> list[str]:
        """Of the files the stage's workers recorded reading (`_read`, kept in its markers), those that
        differ now, for the re-run message; any makes the runner run the stage again."""
        return []

    def plan(self, ctx: Any, upstream: tuple[str, ...]) -> list:
        """The shards of this stage's input: by default the upstream parts cut into `shard_rows`."""
        from pipeline.io.shards import plan_parts

        return plan_parts(ctx.run_fs, upstream, self.config.resources.shard_rows)

    def readers(self) -> dict[str, Any]:
        """Shard kind -> reader `(spec, fs) -> pa.Table`, run inside Ray tasks."""
        from pipeline.io.shards import read_parquet_shard

        return {"parquet": read_parquet_shard}

    def indexes(self) -> tuple:
        """Indexes (io/indexes.IndexSpec) the runner builds, or reuses, before this stage runs."""
        return ()

    def bind(self, inputs: dict[str, StageOutput], indexes: dict[str, Any]) -> None:
        """Receive the resolved `inputs` and built `indexes` (driver side, before `apply`)."""
        self.bound_inputs, self.bound_indexes = dict(inputs), dict(indexes)

    def schedule(self) -> tuple[Phase, ...]:
        """The Ray worker pools the stage starts, from its config alone (no model is resolved), for
        `fusegen plan` and the runner's check before any work: its index builds, then the stage. The
        default is the runner's shard task (`task_steps`) at `resources.num_cpus`."""
        return (Phase(self.name, (task_pool("shard", self.config.resources, self.name),)),)

    def before_execute(self, ctx: Any) -> None:
        """Driver-side work once the stage is known to run, after `bind`, before its shards."""

    def task_steps(self) -> list[BlockStep] | None:
        """A stage with no model actor returns its per-block functions here, in order. The runner then
        reads a shard, runs these steps and writes the shard's pieces in ONE Ray task at
        `resources.num_cpus`: the rows (image bytes included) never pass through the object store
        between reading, the stage and writing. None (the default): `apply` describes the operators."""
        return None

    def apply(self, ds: Any) -> Any:
        """Describe the transform over a dataset of shard blocks; never materialise it. The default
        maps `task_steps` (the runner fuses them with the read and write steps instead)."""
        steps = self.task_steps()
        if steps is None:
            raise NotImplementedError(f"{type(self).__name__} implements neither apply nor task_steps")
        return ds.map_batches(
            run_steps, fn_kwargs={"steps": steps}, batch_size=None, batch_format="pyarrow",
            num_cpus=self.config.resources.num_cpus, **self.config.resources.remote_args(),
        )

    def finish_part(self, table: pa.Table) -> pa.Table:
        """Worker side, on the kept rows of a shard just before they are written (schema metadata)."""
        return table

    def part_prefixes(self) -> tuple[str, ...]:
        """Every name prefix the stage's part files may have: `part_prefix`, or the splits it puts in
        `_split` (one file per shard piece and split, named `<split>-...parquet`)."""
        return (self.part_prefix,)

    def row_group_bytes(self) -> int | None:
        """Cap on a written row group's binary payload (image bytes), or None for pyarrow's default."""
        return None

    def dedup_keys(self, kept: pa.Table) -> Any:
        """Worker side, for a stage with a `dedup` rule: each kept row's content and id keys as the
        (n, 4) uint64 array io/dedup.py decides on (never rows); also run over committed parts (their
        `dedup.columns`) to rebuild the seen keys on resume."""
        raise NotImplementedError(f"{type(self).__name__} declares `dedup` but not `dedup_keys`")

    @staticmethod
    def render_row(prompts_dir: Any, cfg: Any, row: dict) -> list[dict] | None:
        """The chat messages the stage would send for one row (`fusegen render-prompt`)."""
        return None


def run_steps(table: pa.Table, steps: list[BlockStep]) -> pa.Table:
    for step in steps:
        table = step.fn(table, **step.kwargs)
    return table


def check_columns(stage: str, required: tuple[str, ...], present: list[str] | tuple[str, ...]) -> None:
    """R6: name the stage, the missing columns and the columns that are present."""
    missing = [c for c in required if c not in present]
    if missing:
        shown = ", ".join(c for c in present if not c.startswith("_")) or "(none)"
        raise StageInputError(
            f"{stage}: input is missing column(s) {', '.join(missing)}; present columns: {shown}"
        )


