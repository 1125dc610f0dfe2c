"""Connect to Ray: the cluster a `ray job submit` driver runs in, a given address, or an embedded one.

Embedded mode (the demo, `fusegen run` on a laptop) starts a local Ray without the dashboard and with
a small object store, which on 2 cores takes ~5-10 s and ~0.7 GiB. Ray Data's own progress bars are
turned off: the runner prints one bar per stage in rows, which is what a user wants to watch.
"""

from __future__ import annotations

import logging
import os

from pipeline.logging import get_logger

log = get_logger(__name__)

IDLE_WORKERS = 4


# Ray messages that are noise for a fusegen user (see quiet_ray): logger -> the level from which its
# records still reach the terminal.
_NOISE_WARNINGS = ("The maximum number of concurrent tasks for ", "The minimum number of concurrent actors for ")
_RAY_DATA_NOISE = {"ray.data._internal.progress": logging.ERROR, "ray.data._internal.execution.streaming_executor": logging.WARNING}
_RAY_NOISE = {"ray._private.authentication.authentication_token_setup": logging.ERROR}


class _HideOnConsole(logging.Filter):
    """Ray Data's console handler drops records marked `hide`; its ray-data.log file keeps them."""

    def __init__(self, shown_from: int) -> None:
        super().__init__()
        self.shown_from = shown_from

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.shown_from:
            record.hide = True
        return True


class _ToDebug(_HideOnConsole):
    """A Ray notice with no Ray Data log file behind it goes to fusegen's log at debug level instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.shown_from:
            return True
        log.debug("ray (%s): %s", record.name, record.getMessage())
        return False


def _show_warning(message, category, filename, lineno, file=None, line=None, _original=None):
    if str(message).startswith(_NOISE_WARNINGS):
        log.debug("ray data: %s", message)
        return
    _original(message, category, filename, lineno, file, line)


def quiet_ray() -> None:
    """Keep Ray messages that are noise for a fusegen user off the terminal, not out of the logs: Ray
    Data's go on to its ray-data.log (session logs folder), the rest to fusegen's log at debug level
    (`FUSEGEN_LOG_LEVEL=DEBUG` shows them).

    - "The maximum number of concurrent tasks / minimum number of concurrent actors for ... only
      received N input(s)": glue steps are capped at GLUE_TASKS and model stages keep a fixed actor
      pool on purpose; a stage (or a resume) with fewer shards left than that is normal.
    - "Progress bars disabled": fusegen turns Ray Data's bars off and prints one bar per stage.
    - "Dataset ... execution finished": the runner logs one line per stage with its funnel instead.
    - "Token authentication is enabled for this Ray cluster": said on every start of the embedded
      local Ray, which keeps Ray's default (token auth on); nothing for the user to do.
    """
    import functools
    import warnings

    for names, kind in ((_RAY_DATA_NOISE, _HideOnConsole), (_RAY_NOISE, _ToDebug)):
        for name, shown_from in names.items():
            logger = logging.getLogger(name)
            if not any(isinstance(f, kind) for f in logger.filters):
                logger.addFilter(kind(shown_from))
    if getattr(warnings.showwarning, "func", None) is not _show_warning:
        warnings.showwarning = functools.partial(_show_warning, _original=warnings.showwarning)


def cluster_nodes(cfg) -> list[dict]:
    """The nodes of the cluster a run would use (`ray.nodes()`), connecting to it (or starting the
    embedded one) as the run does."""
    import ray

    init_ray(cfg)
    return ray.nodes()


def spread_actors(cls: type, *args, count: int | None = None) -> list:
    """0-CPU Ray actors of `cls` (no restarts: a dead one fails its callers, and the stage resumes), one per
    alive node unless `count` says how many, spread over the nodes."""
    import ray

    count = count or max(1, sum(1 for n in ray.nodes() if n.get("Alive")))
    actor = ray.remote(num_cpus=0, max_restarts=0)(cls)
    return [actor.options(scheduling_strategy="SPREAD").remote(*args) for _ in range(count)]


def check_plan(cfg, plan: list) -> None:
    """Before any work: wait until the cluster can start every stage's worker pools, up to
    `ray.schedule_grace_s` on a cluster it connects to (an embedded Ray cannot grow: checked once).

    Raises:
        StageUnschedulableError: naming each stage that cannot start and what it lacks.
    """
    from pipeline.scheduling import wait_until_plan_fits

    init_ray(cfg)
    connected = bool(cfg.address or os.environ.get("RAY_ADDRESS"))
    wait_until_plan_fits(plan, cfg.schedule_grace_s if connected else 0.0, "ray.schedule_grace_s")


def init_ray(cfg) -> None:
    import ray
    import ray.data

    quiet_ray()
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        common = {"log_to_driver": cfg.log_to_driver, "configure_logging": True, "logging_level": "WARNING"}
        if address:
            log.info("connecting to Ray at %s", address)
            ray.init(address=address, **common)
        else:
            log.info("starting an embedded local Ray (num_cpus=%s)", cfg.num_cpus or "all")
            # address="local": always a fresh instance. With None, ray.init() would attach to any
            # cluster `ray start` left running on this machine and then refuse num_cpus.
            cpus = cfg.num_cpus or os.cpu_count() or 1
            ray.init(
                address="local",
                num_cpus=cfg.num_cpus,
                # Keep a few idle workers beyond one per CPU: model actors hold a worker each, and with
                # Ray's default limit (= CPUs) the glue tasks' workers were killed after 1 s idle and
                # re-spawned for the next shard, ~1 s of CPU each. On 2 CPUs that cost doc2query 28%
                # of its throughput (bench/doc2query_vs_generate.py, docs/benchmarks.md).
                _system_config={"num_workers_soft_limit": int(cpus) + IDLE_WORKERS},
                include_dashboard=False,
                object_store_memory=cfg.object_store_mb * 1024 * 1024,
                **common,
            )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
