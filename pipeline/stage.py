"""The stage contract (STYLE R3-R9) and the column bookkeeping every stage shares.

A stage is a class with a frozen dataclass config, declared `input_columns` / `output_columns`, and
`apply(ds) -> ds` that only describes Ray Data transforms. The runner feeds `apply` a dataset whose
blocks are whole shards and whose rows carry the internal columns below; a stage keeps them and sets
`_status` / `_reason` instead of filtering, so every dropped row is counted and written with a reason.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from pipeline.config import check
from pipeline.errors import StageInputError

# Internal columns (R22: leading underscore, dropped before writing).
SHARD, SRC, NROWS, SLOT = "_shard", "_src", "_n", "_k"
STATUS, REASON = "_status", "_reason"
OK, FILTERED, REJECTED = "ok", "filtered", "rejected"
INTERNAL = (SHARD, SRC, NROWS, SLOT, STATUS, REASON)

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


def actor_map(ds, fn_cls: type, kwargs: dict, resources: Resources, num_gpus: float | None = None):
    """`map_batches` through a fixed pool of `resources.concurrency` actors, each holding a model.

    One call per block = one shard (batch_size=None): batches never mix shards, so a rerun of a
    shard sees exactly the inputs of the first run and a greedy model gives the same output.
    """
    import ray.data

    return ds.map_batches(
        fn_cls,
        fn_constructor_kwargs=kwargs,
        batch_size=None,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=resources.concurrency, max_size=resources.concurrency),
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus if num_gpus is None else num_gpus,
    )


@dataclass(frozen=True)
class Resources:
    """How a stage runs, not what it computes: these fields are left out of the fingerprint.

    `shard_rows` is the unit of resume (a crash loses at most the shards in flight); it is part of
    the fingerprint because it decides the shard ids.
    """

    # How it runs, not what it computes: left out of the fingerprint (shard_rows stays in).
    OPERATIONAL: ClassVar[frozenset] = frozenset(
        {"num_cpus", "num_gpus", "concurrency", "batch_size", "stall_timeout_s"}
    )

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # Actor-pool size for model stages (max actors); 1 = a single actor.
    concurrency: int = 1
    # Rows per model call inside a shard (the engine's batch).
    batch_size: int = 8
    shard_rows: int = 256
    # Seconds the driver waits for the stage's next finished block (one shard) before it stops the
    # stage as hung (StageStalledError; committed shards are kept). Must cover model loading. 0 = off.
    # The only hang guard for the vllm backend, whose ray.data.llm stage has no per-request timeout.
    stall_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        check(self.num_cpus >= 0, "resources", "num_cpus", f"must be >= 0 (got {self.num_cpus})")
        check(self.num_gpus >= 0, "resources", "num_gpus", f"must be >= 0 (got {self.num_gpus})")
        check(self.concurrency >= 1, "resources", "concurrency", f"must be >= 1 (got {self.concurrency})")
        check(self.batch_size >= 1, "resources", "batch_size", f"must be >= 1 (got {self.batch_size})")
        check(self.shard_rows >= 1, "resources", "shard_rows", f"must be >= 1 (got {self.shard_rows})")
        check(self.stall_timeout_s >= 0, "resources", "stall_timeout_s", f"must be >= 0 (got {self.stall_timeout_s})")


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
    return to_dict(obj)


class Stage(abc.ABC):
    """Base class. Subclasses set the class attributes and implement `apply`."""

    name: ClassVar[str]
    config_cls: ClassVar[type[StageConfig]]
    input_columns: ClassVar[tuple[str, ...]] = ()
    output_columns: ClassVar[tuple[str, ...]] = ()
    # Prompt files (relative to prompts/) whose bytes enter the fingerprint.
    prompt_files: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: StageConfig, context: Any) -> None:
        self.config = config
        self.context = context

    @property
    def fanout(self) -> int:
        """Output rows per input row (doc2query asks for N queries per passage)."""
        return 1

    def models(self) -> dict[str, str]:
        """Model role -> resolved model identity, for the manifest and the card."""
        return {}

    def prepare(self) -> None:
        """Driver-side work before the transform (resolve models, validate prompts); no heavy loads."""

    def before_execute(self, ctx: Any, outputs: dict[str, tuple[str, str]]) -> None:
        """Driver-side work once the stage is known to run, before its shards (consistency builds its
        passage index here). `outputs`: earlier stage name -> (parts folder, fingerprint)."""

    @abc.abstractmethod
    def apply(self, ds: Any) -> Any:
        """Describe the transform over a dataset of shard blocks; never materialise it."""

    def commit_hook(self, table: pa.Table, state: dict) -> pa.Table:
        """Driver-side pass over each finished shard, in shard order (ingest dedups here)."""
        return table

    def resume_state(self, run_fs, parts_dir: str) -> dict:
        """Rebuild `commit_hook` state from the parts already committed under `parts_dir` on resume."""
        return {}


def check_columns(stage: str, required: tuple[str, ...], present: list[str] | tuple[str, ...]) -> None:
    """R6: name the stage, the missing columns and the columns that are present."""
    missing = [c for c in required if c not in present]
    if missing:
        shown = ", ".join(c for c in present if not c.startswith("_")) or "(none)"
        raise StageInputError(
            f"{stage}: input is missing column(s) {', '.join(missing)}; present columns: {shown}"
        )


def status_columns(n: int, status: str = OK, reason: str = "") -> dict[str, list]:
    """Default `_status` / `_reason` values for `n` rows."""
    return {STATUS: [status] * n, REASON: [reason] * n}
