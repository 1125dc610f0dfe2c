"""The runner: plans shards, applies each stage over Ray Data, commits shards, writes manifests.

For every stage in order: compute its fingerprint (config + input identity + prompt bytes + upstream
fingerprint + package version); skip it when its manifest is complete with the same fingerprint;
otherwise resolve the earlier outputs it reads, build (or reuse) the indexes it declares, plan the
shards, drop the ones already committed (a resumed run) and stream the rest through the stage. The
workers write every row (io/commit.py); the driver sees receipts only and commits a shard by writing
its marker last, so a crash or `ray job stop` loses only the shards in flight and a rerun produces
the same rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline import __version__, faults
from pipeline.errors import LedgerError, StageInputError
from pipeline.io.commit import ShardCommitter, committed_files, remove_garbage, rewrite_parts, write_pieces
from pipeline.io.dedup import FirstSeen
from pipeline.io.fs import RunFS
from pipeline.io.image_store import collect_store_garbage
from pipeline.io.indexes import DONE, IndexHandle, IndexSpec, finish_index
from pipeline.io.locks import index_lock
from pipeline.io.manifest import (
    MANIFEST,
    aggregate_markers,
    check_ledger,
    config_diff,
    fingerprint,
    inputs_diff,
    output_fingerprint,
    reads_summary,
    recorded_reads,
)
from pipeline.io.runlock import run_lock
from pipeline.io.shards import ShardSpec, tag_rows
from pipeline.logging import get_logger
from pipeline.progress import StageProgress
from pipeline.raycluster import check_plan, spread_actors
from pipeline.rundir import RunContext, check_run_dir, stage_dirs
from pipeline.stage import Stage, StageOutput, glue_map, run_steps, shards_pending
from pipeline.stallguard import guarded

log = get_logger(__name__)


@dataclass
class StageResult:
    name: str
    decision: str
    manifest: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """Where a stage's output goes: the run dir for pipeline stages, the index root for side stages."""

    uri: str
    stage_dir: str
    parts_dir: str

    @property
    def fs(self) -> RunFS:
        return RunFS.from_uri(self.uri)


def read_shards(batch: dict, source_uri: str, readers: dict) -> pa.Table:
    """Ray Data task: shard descriptors in, the shards' tagged rows out."""
    run_fs = RunFS.from_uri(source_uri)
    tables = []
    for i in range(len(batch["shard"])):
        spec = ShardSpec(**{k: _py(batch[k][i]) for k in ShardSpec.__dataclass_fields__})
        faults.storage("read", spec.source)
        tables.append(tag_rows(readers[spec.kind](spec, run_fs.fs), spec.shard))
    return pa.concat_tables(tables, promote_options="default")


def run_shard_task(batch: dict, read: dict, steps: list, write: dict) -> pa.Table:
    """Ray Data task of a task stage (`Stage.task_steps`): read one shard, run the steps, write its
    pieces; only the receipts leave the task."""
    return write_pieces(run_steps(read_shards(batch, **read), steps), **write)


def _py(value):
    return value.item() if hasattr(value, "item") else value


def run_pipeline(ctx: RunContext, stages: list[Stage]) -> list[StageResult]:
    """Run (or resume) every stage, holding the run dir's lock throughout; returns what was decided."""
    with run_lock(ctx.run_fs, "fusegen run"):
        return _run_locked(ctx, stages)


def _run_locked(ctx: RunContext, stages: list[Stage]) -> list[StageResult]:
    check_run_dir(ctx)
    # Before any stage prepares (resolves models, reads prompts and inputs): a config the cluster cannot
    # start (a TP group larger than any node, a custom resource no node has) fails now, every such
    # stage named with what it lacks, not at its turn hours later or queued forever by Ray.
    check_plan(ctx.config.ray, stage_plan(stages))
    # Every stage prepares (renders its prompts, resolves its models, identifies its input files)
    # before any stage runs: a bad prompt or model of the last stage stops the run before hours of work.
    identities = []
    for stage in stages:
        stage.prepare()
        # The prompt files the stage runs with, by hash, for its manifest (the card reads them there, so
        # a prompt edited after the run does not change what the run's card says).
        identities.append((stage.input_identity(), prompt_hashes(ctx.prompts_dir, stage.prompt_files)))
    results: list[StageResult] = []
    outputs: dict[str, StageOutput] = {}
    upstream: StageOutput | None = None
    fingerprints, upstream_fp = [], ""
    for stage, (stage_dir, parts_dir), (identity, prompts) in zip(stages, stage_dirs(stages), identities):
        semantic = {**stage.config.semantic_dict(), "models": stage.models(), "inputs": identity}
        fp = fingerprint(stage.name, semantic, [ctx.prompts_dir / p for p in stage.prompt_files], upstream_fp,
                         __version__)
        target = Target(ctx.run_uri, stage_dir, parts_dir)
        results.append(_run_stage(ctx, stage, target, upstream, fp, identity, outputs, prompts))
        # The next stage chains on this one's output: its fingerprint and the files its workers read.
        upstream_fp = output_fingerprint(fp, results[-1].manifest)
        fingerprints.append(upstream_fp)
        parts, _ = committed_files(ctx.run_fs, stage_dir)
        upstream = StageOutput(stage.name, upstream_fp, tuple(ctx.run_fs.path(p) for p in parts))
        outputs[stage.name] = upstream
    if not ctx.shared_indexes:
        prune_indexes(ctx, live_indexes(stages, fingerprints))
    if any(not r.decision.startswith("skipped") for r in results):
        # The run's image store, and its own index folder's (pool images): a shared index dir may be
        # in use by another run, so its store is left alone.
        stores = {"image store": ctx.run_fs}
        if not ctx.shared_indexes:
            stores["index image store"] = RunFS.from_uri(ctx.index_uri)
        for what, store_fs in stores.items():
            garbage = collect_store_garbage(store_fs, keep=0)
            if garbage.count:
                log.info("%s: removed %d file(s) nothing refers to (%.1f MiB)",
                         what, garbage.count, garbage.bytes / 2**20)
    return results


def stage_plan(stages: list[Stage]) -> list[tuple]:
    """(stage name, its phases) for every stage: what pipeline/scheduling.py checks and prints."""
    return [(stage.name, stage.schedule()) for stage in stages]


def prompt_hashes(prompts_dir, files: tuple[str, ...]) -> dict[str, str]:
    """Prompt file (relative to prompts/) -> sha256 of its bytes."""
    import hashlib

    return {name: hashlib.sha256((prompts_dir / name).read_bytes()).hexdigest() for name in files}


def live_indexes(stages: list[Stage], fingerprints: list[str]) -> set[str]:
    """The index folders this run's stages declare with their current identities (skipped stages too:
    a later re-run of theirs must find their index)."""
    fp_of = {stage.name: fp for stage, fp in zip(stages, fingerprints)}
    live = set()
    for stage in stages:
        for spec in stage.indexes():
            source = "" if spec.source is None else fp_of.get(spec.source)
            if source is not None:
                live.add(f"{spec.name}-{spec.key(source)}")
    return live


def prune_indexes(ctx: RunContext, live: set[str]) -> None:
    """Remove the run's own index folders no stage declares any more (another model, pool or corpus).

    Done once the whole run has finished, not when one stage builds a new index: two stages may share
    an index (gme_score and negatives), and one of them changing model must not delete the other's."""
    index_fs = RunFS.from_uri(ctx.index_uri)
    for folder in index_fs.list_dirs(""):
        if folder not in live and index_fs.exists(f"{folder}/{MANIFEST}"):
            log.info("index %s: no stage of this run uses it any more; removed", folder)
            index_fs.delete_dir(folder)


def _decide(run_fs: RunFS, stage: Stage, stage_dir: str, fp: str, identity: dict) -> tuple[str, bool]:
    """(why, skip?) from the previous manifest, wiping stale output when the fingerprint changed."""
    old = run_fs.read_json(f"{stage_dir}/{MANIFEST}")
    if old is None:
        run_fs.delete_dir(stage_dir)
        return "run: no previous output", False
    if old.get("fingerprint") == fp:
        # The files the workers read that the fingerprint could not know (ingest: the images its records
        # name), checked again: one edited makes the stage run again, a file nobody read changes nothing.
        if old.get("read") or old.get("status") != "complete":
            changed = stage.changed_reads(recorded_reads(aggregate_markers(run_fs, stage_dir)[2]))
            if changed:
                run_fs.delete_dir(stage_dir)
                more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
                return f"re-run: files read by the last run changed: {', '.join(changed[:5])}{more}", False
        if old.get("status") == "complete":
            return "skipped: complete with the same fingerprint", True
        return f"resume: previous attempt was {old.get('status')}", False
    changed = config_diff(old.get("config"), stage.config.semantic_dict())
    changed += inputs_diff(old.get("inputs"), identity)
    why = "; ".join(changed[:5]) if changed else "prompt file, upstream output or package version changed"
    run_fs.delete_dir(stage_dir)
    return f"re-run: {why}", False


def _run_stage(ctx: RunContext, stage: Stage, target: Target, upstream: StageOutput | None, fp: str,
               identity: dict, outputs: dict[str, StageOutput], prompts: dict | None = None) -> StageResult:
    run_fs = target.fs
    decision, skip = _decide(run_fs, stage, target.stage_dir, fp, identity)
    log.info("%s: %s", stage.name, decision)
    if skip:
        # The manifest says what the latest run did with the stage, skips included.
        manifest = run_fs.read_json(f"{target.stage_dir}/{MANIFEST}")
        manifest["decision"] = decision
        run_fs.write_json(f"{target.stage_dir}/{MANIFEST}", manifest)
        return StageResult(stage.name, decision, manifest)
    started = time.monotonic()
    stage.bind(_inputs(stage, outputs), {spec.name: build_index(ctx, stage, spec, outputs) for spec in stage.indexes()})
    stage.before_execute(ctx)
    specs = stage.plan(ctx, upstream.parts if upstream else ())
    manifest = {
        "stage": stage.name,
        "fingerprint": fp,
        "status": "running",
        "rows": {"in": 0, "out": 0, "filtered": 0, "rejected": 0},
        "reasons": {},
        "seconds": 0.0,
        "models": stage.models(),
        "decision": decision,
        "config": stage.config.semantic_dict(),
        "inputs": identity,
        "prompts": prompts or {},
        "shards": {"planned": len(specs), "done": 0},
        "input_rows": sum(s.rows for s in specs),
        "fanout": stage.fanout,
    }
    run_fs.write_json(f"{target.stage_dir}/{MANIFEST}", manifest)
    try:
        receipt_bytes = _execute(ctx, stage, target, specs)
    except BaseException as exc:
        manifest["status"] = "failed" if isinstance(exc, Exception) else "running"
        manifest["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        manifest["seconds"] = round(time.monotonic() - started, 3)
        run_fs.write_json(f"{target.stage_dir}/{MANIFEST}", manifest)
        raise
    remove_garbage(run_fs, target.stage_dir, target.parts_dir, stage.part_prefixes())
    rows, reasons, markers = aggregate_markers(run_fs, target.stage_dir)
    fixed = stage.fanout
    check_ledger(stage.name, rows, manifest["input_rows"] * fixed if fixed is not None else None)
    covered = sum(m.get("input_rows", 0) for m in markers.values())
    if covered != manifest["input_rows"]:
        raise LedgerError(f"{stage.name}: shards cover {covered} input rows, planned {manifest['input_rows']}")
    manifest.update(
        status="complete",
        rows=rows,
        reasons=dict(reasons.most_common()),
        seconds=round(time.monotonic() - started, 3),
        shards={"planned": len(specs), "done": len(markers)},
        emitted_rows=rows["out"],
        driver_receipt_bytes=receipt_bytes,
    )
    read = recorded_reads(markers)
    if read:
        manifest["read"] = reads_summary(read)
    run_fs.write_json(f"{target.stage_dir}/{MANIFEST}", manifest)
    log.info(
        "%s: in=%d out=%d filtered=%d rejected=%d in %.1fs",
        stage.name, rows["in"], rows["out"], rows["filtered"], rows["rejected"], manifest["seconds"],
    )
    return StageResult(stage.name, decision, manifest)


def _inputs(stage: Stage, outputs: dict[str, StageOutput]) -> dict[str, StageOutput]:
    missing = [section for section in stage.inputs.values() if section not in outputs]
    if missing:
        raise StageInputError(
            f"{stage.name}: reads the output of {', '.join(missing)}, which this run's stage list does not "
            f"produce before it (stages so far: {', '.join(outputs) or 'none'})"
        )
    return {name: outputs[section] for name, section in stage.inputs.items()}


def build_index(ctx: RunContext, stage: Stage, spec: IndexSpec, outputs: dict[str, StageOutput]) -> IndexHandle:
    """Build the declared index once per identity (resumable), or reuse a finished one."""
    import ray

    from pipeline.raycluster import init_ray

    source = _inputs_for_index(stage, spec, outputs)
    key = spec.key(source.fingerprint)
    folder = f"{spec.name}-{key}"
    target = Target(ctx.index_uri, folder, folder)
    index_fs = target.fs
    # Another run sharing the index dir may be building the same index: wait for it, then reuse.
    with index_lock(index_fs, folder):
        result = _run_stage(ctx, spec.embed, target, source, key, {}, {})
        done = index_fs.read_json(f"{folder}/{DONE}")
        if done is None or not result.decision.startswith("skipped"):
            init_ray(ctx.config.ray)
            parts, _ = committed_files(index_fs, folder)
            task = ray.remote(num_cpus=0)(finish_index)
            done = ray.get(task.remote(ctx.index_uri, folder, parts, spec.kind, spec.nlist))
            log.info("%s: index %s built (%d vectors, %s)", stage.name, folder, done["count"], done["kind"])
    return IndexHandle(ctx.index_uri, folder, done["count"], done["dim"], done["kind"])


def _inputs_for_index(stage: Stage, spec: IndexSpec, outputs: dict[str, StageOutput]) -> StageOutput:
    if spec.source is None:
        # The embed stage reads its own input (an image pool); its identity carries the files.
        return StageOutput(spec.name, "", ())
    if spec.source not in outputs:
        raise StageInputError(
            f"{stage.name}: its index {spec.name!r} embeds the output of {spec.source}, which this run's stage "
            f"list does not produce before it"
        )
    return outputs[spec.source]


def _execute(ctx: RunContext, stage: Stage, target: Target, specs: list[ShardSpec]) -> int:
    """Stream the pending shards through the stage; returns the receipt bytes the driver received."""
    from pipeline.raycluster import init_ray

    run_fs = target.fs
    _, _, markers = aggregate_markers(run_fs, target.stage_dir)
    removed = remove_garbage(run_fs, target.stage_dir, target.parts_dir, stage.part_prefixes())
    if removed:
        log.info("%s: removed %d uncommitted file(s) of an interrupted attempt", stage.name, removed)
    pending = [s for s in specs if s.shard not in markers]
    total = sum(s.rows for s in specs)
    progress = StageProgress(stage.name, total, total - sum(s.rows for s in pending))
    if not pending:
        progress.close()
        return 0
    init_ray(ctx.config.ray)
    seen = FirstSeen.on_ray(stage.dedup) if stage.dedup is not None else None
    try:
        if seen is not None and markers:
            _reload_keys(stage, target, seen)
        return _stream(ctx, stage, target, pending, progress, seen)
    finally:
        if seen is not None:
            seen.close()


def _reload_keys(stage: Stage, target: Target, seen: FirstSeen) -> None:
    """A resumed dedup stage: its seen keys (held by Ray actors, io/dedup.py, never by the driver) are
    rebuilt from the committed parts, a prefix of the shard order."""
    parts, _ = committed_files(target.fs, target.stage_dir)
    started = time.monotonic()
    count = seen.load(target.uri, parts, stage.dedup_keys)
    log.info("%s: dedup keys of %d committed row(s) reloaded in %.1fs", stage.name, count, time.monotonic() - started)


def _stream(ctx: RunContext, stage: Stage, target: Target, pending: list[ShardSpec], progress: StageProgress,
            seen: FirstSeen | None) -> int:
    import ray.data

    run_fs = target.fs
    rewrite = Rewriters(target.uri, target.stage_dir, target.parts_dir) if seen is not None else None
    committer = ShardCommitter(run_fs, stage, target.stage_dir, pending, progress,
                               decide=seen.decide if seen is not None else None, rewrite=rewrite)
    ds = ray.data.from_items([s.to_item() for s in pending], override_num_blocks=len(pending))
    read = {"source_uri": ctx.run_uri, "readers": stage.readers()}
    write = {"run_uri": target.uri, "stage": stage, "stage_dir": target.stage_dir, "parts_dir": target.parts_dir}
    steps = stage.task_steps()
    if steps is not None:
        resources = stage.config.resources
        ds = ds.map_batches(run_shard_task, fn_kwargs={"read": read, "steps": steps, "write": write},
                            batch_size=1, batch_format="numpy", num_cpus=resources.num_cpus,
                            **resources.remote_args())
    else:
        ds = glue_map(ds, read_shards, batch_size=1, batch_format="numpy", fn_kwargs=read)
        with shards_pending(len(pending)):  # no actor pool larger than the shards it will get
            ds = stage.apply(ds)
        ds = glue_map(ds, write_pieces, fn_kwargs=write)
    try:
        receipts = ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)
        for block in guarded(receipts, stage.config.resources.stall_timeout_s, stage.name):
            committer.add(block)
        committer.finish()
    finally:
        progress.close()
        if rewrite is not None:
            rewrite.close()
    # Sweep once more now that every shard is committed: parts a dedup rewrite superseded, and
    # temporaries of a worker killed mid-write whose task Ray ran again (the retry wrote the same names).
    removed = remove_garbage(run_fs, target.stage_dir, target.parts_dir, stage.part_prefixes())
    if removed:
        log.debug("%s: removed %d file(s) no marker names (superseded or left by a retried write)",
                  stage.name, removed)
    return committer.receipt_bytes


class Rewriters:
    """A dedup's rewrites (io/commit.rewrite_parts) run in 0-CPU actors, one per node, started at the first
    rewrite: not on the driver (rows stay off it), and not as tasks (a 0-CPU task in flight beside busy
    workers starts a worker process of its own, ~0.15 GiB each, up to ShardCommitter.MAX_REWRITES of them).
    The committer gets a future and goes on taking receipts while a rewrite runs; an actor that dies fails
    its rewrite's future, and with it the stage (a resume redoes the shard)."""

    def __init__(self, uri: str, stage_dir: str, parts_dir: str) -> None:
        self.args, self.actors, self.calls = (uri, stage_dir, parts_dir), [], 0

    def __call__(self, pieces: list[dict], overrides: dict):
        if not self.actors:
            self.actors = spread_actors(_Rewriter, *self.args)
        self.calls += 1
        return self.actors[self.calls % len(self.actors)].rewrite.remote(pieces, overrides).future()

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


class _Rewriter:
    def __init__(self, uri: str, stage_dir: str, parts_dir: str) -> None:
        self.args = (uri, stage_dir, parts_dir)

    def rewrite(self, pieces: list[dict], overrides: dict):
        return rewrite_parts(*self.args, pieces, overrides)
