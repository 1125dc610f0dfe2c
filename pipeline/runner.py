"""The runner: plans shards, applies each stage over Ray Data, commits shards, writes manifests.

For every stage in order: compute its fingerprint (config + prompt bytes + upstream fingerprint +
package version); skip it when its manifest is complete with the same fingerprint; otherwise plan
the shards, drop the ones already committed (a resumed run) and stream the rest through the stage.
Finished shards are written atomically by the driver (part file, rejects, then a marker), so a
crash or `ray job stop` loses only the shards in flight and a rerun produces the same rows.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import __version__
from pipeline.errors import LedgerError, StageInputError
from pipeline.io.fs import RunFS
from pipeline.io.manifest import (
    MANIFEST,
    PARTS_MARK,
    REJECTS,
    aggregate_markers,
    check_ledger,
    config_diff,
    fingerprint,
)
from pipeline.io.shards import ShardSpec, plan_from_parts, read_parquet_shard, tag_rows
from pipeline.logging import get_logger
from pipeline.progress import StageProgress
from pipeline.rundir import RunContext, check_run_dir, stage_dirs
from pipeline.stage import (
    FILTERED,
    INTERNAL,
    OK,
    REASON,
    REJECTED,
    SHARD,
    SLOT,
    SRC,
    STATUS,
    Stage,
    glue_map,
)
from pipeline.stallguard import guarded

log = get_logger(__name__)


@dataclass
class StageResult:
    name: str
    decision: str
    manifest: dict = field(default_factory=dict)


def read_shards(batch: dict, root_uri: str, readers: dict) -> pa.Table:
    """Ray Data task: shard descriptors in, the shards' tagged rows out."""
    run_fs = RunFS.from_uri(root_uri)
    tables = []
    for i in range(len(batch["shard"])):
        spec = ShardSpec(**{k: _py(batch[k][i]) for k in ShardSpec.__dataclass_fields__})
        tables.append(tag_rows(readers[spec.kind](spec, run_fs.fs), spec.shard))
    return pa.concat_tables(tables, promote_options="default")


def _py(value):
    return value.item() if hasattr(value, "item") else value


def run_pipeline(ctx: RunContext, stages: list[Stage]) -> list[StageResult]:
    """Run (or resume) every stage; returns what was decided for each."""
    check_run_dir(ctx)
    results, upstream_fp, upstream_dir = [], "", None
    # Stage name -> (parts folder, fingerprint): what `before_execute` hooks may build on (the
    # consistency stage embeds ingest's passages as its search pool).
    outputs: dict[str, tuple[str, str]] = {}
    # Every stage prepares (renders its prompts, resolves its models) before any stage runs: a bad
    # prompt or model of the last stage stops the run before hours of work, not after.
    fingerprints = []
    for stage in stages:
        stage.prepare()
        semantic = {**stage.config.semantic_dict(), "models": stage.models()}
        prompts = [ctx.prompts_dir / p for p in stage.prompt_files]
        upstream_fp = fingerprint(stage.name, semantic, prompts, upstream_fp, __version__)
        fingerprints.append(upstream_fp)
    for stage, (stage_dir, parts_dir), fp in zip(stages, stage_dirs(stages), fingerprints):
        results.append(_run_stage(ctx, stage, stage_dir, parts_dir, upstream_dir, fp, outputs))
        upstream_dir = parts_dir
        outputs[stage.name] = (parts_dir, fp)
    return results


def run_side_stage(ctx: RunContext, stage: Stage, folder: str, upstream_dir: str, fingerprint: str) -> StageResult:
    """Build a stage's side output (e.g. a search index) with the stage machinery: skipped when
    complete with the same fingerprint, resumed shard by shard after a crash, ledger-checked."""
    return _run_stage(ctx, stage, folder, folder, upstream_dir, fingerprint, {})


def _decide(ctx: RunContext, stage: Stage, stage_dir: str, fp: str) -> tuple[str, bool]:
    """(why, skip?) from the previous manifest, wiping stale output when the fingerprint changed."""
    old = ctx.run_fs.read_json(f"{stage_dir}/{MANIFEST}")
    if old is None:
        ctx.run_fs.delete_dir(stage_dir)
        return "run: no previous output", False
    if old.get("fingerprint") == fp:
        if old.get("status") == "complete":
            return "skipped: complete with the same fingerprint", True
        return f"resume: previous attempt was {old.get('status')}", False
    changed = config_diff(old.get("config"), stage.config.semantic_dict())
    why = "; ".join(changed[:5]) if changed else "prompt file, upstream output or package version changed"
    ctx.run_fs.delete_dir(stage_dir)
    return f"re-run: {why}", False


def _run_stage(ctx, stage: Stage, stage_dir: str, parts_dir: str, upstream_dir, fp: str, outputs: dict) -> StageResult:
    decision, skip = _decide(ctx, stage, stage_dir, fp)
    log.info("%s: %s", stage.name, decision)
    if skip:
        # The manifest says what the latest run did with the stage, skips included.
        manifest = ctx.run_fs.read_json(f"{stage_dir}/{MANIFEST}")
        manifest["decision"] = decision
        ctx.run_fs.write_json(f"{stage_dir}/{MANIFEST}", manifest)
        return StageResult(stage.name, decision, manifest)
    started = time.monotonic()
    specs = stage.plan(ctx, upstream_dir) if hasattr(stage, "plan") else plan_from_parts(
        ctx.run_fs, upstream_dir, stage.config.resources.shard_rows
    )
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
        "shards": {"planned": len(specs), "done": 0},
        "input_rows": sum(s.rows for s in specs),
        "fanout": stage.fanout,
    }
    ctx.run_fs.write_json(f"{stage_dir}/{MANIFEST}", manifest)
    try:
        stage.before_execute(ctx, outputs)
        _execute(ctx, stage, stage_dir, parts_dir, specs)
    except BaseException as exc:
        manifest["status"] = "failed" if isinstance(exc, Exception) else "running"
        manifest["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        manifest["seconds"] = round(time.monotonic() - started, 3)
        ctx.run_fs.write_json(f"{stage_dir}/{MANIFEST}", manifest)
        raise
    rows, reasons, markers = aggregate_markers(ctx.run_fs, stage_dir)
    check_ledger(stage.name, rows, manifest["input_rows"] * stage.fanout)
    manifest.update(
        status="complete",
        rows=rows,
        reasons=dict(reasons.most_common()),
        seconds=round(time.monotonic() - started, 3),
        shards={"planned": len(specs), "done": len(markers)},
    )
    ctx.run_fs.write_json(f"{stage_dir}/{MANIFEST}", manifest)
    log.info(
        "%s: in=%d out=%d filtered=%d rejected=%d in %.1fs",
        stage.name, rows["in"], rows["out"], rows["filtered"], rows["rejected"], manifest["seconds"],
    )
    return StageResult(stage.name, decision, manifest)


def _execute(ctx: RunContext, stage: Stage, stage_dir: str, parts_dir: str, specs: list[ShardSpec]) -> None:
    import ray.data

    from pipeline.raycluster import init_ray

    _, _, markers = aggregate_markers(ctx.run_fs, stage_dir)
    pending = [s for s in specs if s.shard not in markers]
    progress = StageProgress(stage.name, sum(s.rows for s in specs), sum(s.rows for s in specs if s.shard in markers))
    if not pending:
        progress.close()
        return
    init_ray(ctx.config.ray)
    state = stage.resume_state(ctx.run_fs, parts_dir) if markers else {}
    committer = ShardCommitter(ctx.run_fs, stage, stage_dir, parts_dir, pending, state, progress)
    readers = getattr(stage, "readers", {"parquet": read_parquet_shard})
    ds = ray.data.from_items([s.to_item() for s in pending], override_num_blocks=len(pending))
    ds = glue_map(ds, read_shards, batch_size=1, batch_format="numpy",
                  fn_kwargs={"root_uri": ctx.run_uri, "readers": readers})
    ds = stage.apply(ds)
    try:
        blocks = ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)
        for block in guarded(blocks, stage.config.resources.stall_timeout_s, stage.name):
            committer.add(block)
    finally:
        progress.close()
    committer.finish()


class ShardCommitter:
    """Groups streamed rows by shard and commits each shard once all its input rows are back."""

    def __init__(self, run_fs: RunFS, stage: Stage, stage_dir: str, parts_dir: str, pending, state, progress):
        self.run_fs, self.stage, self.stage_dir, self.parts_dir = run_fs, stage, stage_dir, parts_dir
        self.specs = {s.shard: s for s in pending}
        self.order = [s.shard for s in pending]
        self.buffers: dict[str, list[pa.Table]] = {}
        self.seen: dict[str, set[int]] = {}
        self.ready: dict[str, pa.Table] = {}
        self.state, self.progress = state, progress
        # Stages with a stateful commit hook (ingest dedup) must commit in shard order.
        self.ordered = getattr(stage, "ordered_commit", False)

    def add(self, block: pa.Table) -> None:
        if block.num_rows == 0:
            return
        for shard in pc.unique(block[SHARD]).to_pylist():
            part = block.filter(pc.equal(block[SHARD], shard))
            if shard not in self.specs:
                raise LedgerError(f"{self.stage.name}: rows for unknown shard {shard!r}")
            self.buffers.setdefault(shard, []).append(part)
            self.seen.setdefault(shard, set()).update(part[SRC].to_pylist())
            if len(self.seen[shard]) == self.specs[shard].rows:
                table = pa.concat_tables(self.buffers.pop(shard), promote_options="default")
                self.ready[shard] = table
        self._flush()

    def _flush(self) -> None:
        while self.order:
            head = self.order[0]
            if head not in self.ready:
                if self.ordered:
                    return
                shard = next((s for s in self.order if s in self.ready), None)
                if shard is None:
                    return
            else:
                shard = head
            self._commit(self.specs[shard], self.ready.pop(shard))
            self.order.remove(shard)

    def finish(self) -> None:
        if self.order:
            raise LedgerError(
                f"{self.stage.name}: the stream ended but {len(self.order)} shard(s) never came back "
                f"complete (first: {self.order[0]}); rerun to resume"
            )

    def _commit(self, spec: ShardSpec, table: pa.Table) -> None:
        sort_keys = [(SRC, "ascending")] + ([(SLOT, "ascending")] if SLOT in table.column_names else [])
        table = table.sort_by(sort_keys)
        table = self.stage.commit_hook(table, self.state)
        status = table[STATUS]
        kept = table.filter(pc.equal(status, OK))
        dropped = table.filter(pc.not_equal(status, OK))
        kept = kept.drop_columns([c for c in kept.column_names if c in INTERNAL])
        if kept.num_rows:
            prefix = getattr(self.stage, "part_prefix", "part")
            self.run_fs.write_parquet(f"{self.parts_dir}/{prefix}-{spec.shard}.parquet", kept)
        if dropped.num_rows:
            self.run_fs.write_parquet(f"{self.stage_dir}/{REJECTS}/part-{spec.shard}.parquet", reject_table(dropped))
        statuses = Counter(status.to_pylist())
        rows = {
            "in": spec.rows * self.stage.fanout,
            "out": statuses.get(OK, 0),
            "filtered": statuses.get(FILTERED, 0),
            "rejected": statuses.get(REJECTED, 0),
        }
        unknown = set(statuses) - {OK, FILTERED, REJECTED}
        if unknown:
            raise LedgerError(f"{self.stage.name}: unknown row status {sorted(unknown)} in shard {spec.shard}")
        check_ledger(f"{self.stage.name} shard {spec.shard}", rows)
        reasons = Counter(dropped[REASON].to_pylist())
        marker = {"shard": spec.shard, "rows": rows, "reasons": dict(reasons)}
        self.run_fs.write_json(f"{self.stage_dir}/{PARTS_MARK}/{spec.shard}.json", marker)
        self.progress.update(spec.rows, rows)


def reject_table(dropped: pa.Table) -> pa.Table:
    """Rejects keep the row's id, the reason and its scalar/text columns (binary image data is dropped)."""
    keep = [
        c
        for c in dropped.column_names
        if c not in INTERNAL
        and not pa.types.is_binary(dropped.schema.field(c).type)
        and not pa.types.is_struct(dropped.schema.field(c).type)
    ]
    out = dropped.select(keep)
    out = out.append_column("reason", dropped[REASON]).append_column("status", dropped[STATUS])
    if "id" not in out.column_names:
        raise StageInputError("rejects need an `id` column; the stage must set one on every row")
    return out
