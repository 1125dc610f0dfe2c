"""`fusegen` command line: run, plan, status, stages, make-tiny-models, index-images, card, push, export,
validate, gc, render-prompt, eval."""

from __future__ import annotations

import argparse
import json
import os
import sys

from pipeline.errors import PipelineConfigError, PipelineError


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a reader that has gone is caught below
        return code
    except BrokenPipeError:
        # `fusegen status RUN | head`: the reader has gone. Stop quietly, as Python's docs advise for
        # command-line tools (stdout pointed at devnull, so the exit's flush raises nothing more).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="fusegen", description="Fused-modal retrieval training data on Ray.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run or resume a pipeline from a config file")
    run.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    run.add_argument("--run-dir", help="run directory (local path or pyarrow URI); default runs/<name>")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set doc2query.queries_per_passage=2")
    run.add_argument("--force", action="store_true", help="reuse a run dir made by another pipeline or version")
    run.add_argument("--index-dir", help="shared folder (path or URI) for indexes, reused across runs")
    run.add_argument("--push", metavar="OWNER/NAME", help="then push the export to this Hub dataset repo")
    run.add_argument("--dry-run", action="store_true",
                     help="print each stage's worker pools and check them against the cluster; run nothing")
    plan = sub.add_parser("plan", help="print each stage's worker pools (GPU bundles, actors) and check that the "
                                       "cluster can start them; run nothing")
    plan.add_argument("config", help="YAML config, e.g. configs/gpu.yaml")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value, e.g. --set doc2query.llm.tensor_parallel_size=8")
    plan.add_argument("--cluster", metavar="JSON|FILE",
                      help="plan against these nodes instead of the cluster (RAY_ADDRESS, `ray.address` or an "
                           'embedded Ray): a JSON list of node resources, e.g. \'[{"CPU": 96, "GPU": 8}]\'')
    status = sub.add_parser("status", help="print the per-stage funnel of a run directory")
    status.add_argument("run_dir")
    status.add_argument("--json", action="store_true", help="print the manifests as JSON")
    stages = sub.add_parser("stages", help="list each track's stages and their columns")
    stages.add_argument("--track", help="only this track (e.g. gme)")
    tiny = sub.add_parser("make-tiny-models", help="build the offline tiny models into DIR")
    tiny.add_argument("dir")
    index = sub.add_parser("index-images", help="build an image pool index once, for runs to reuse (--index-dir)")
    index.add_argument("pool", help="a folder of images, or a JSONL/Parquet table of path | URL | bytes (+ caption, license)")
    index.add_argument("--out", required=True, help="the shared index folder (path or URI); pass it to runs as --index-dir")
    index.add_argument("--config", default="configs/base.yaml",
                       help="config naming the retriever, models and fetch limits (the run's own config)")
    index.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set images.retrieval.retriever=clip")
    card = sub.add_parser("card", help="write the dataset card (export/README.md) of a finished run")
    card.add_argument("run_dir")
    _card_args(card)
    push = sub.add_parser("push", help="upload a finished run's export and card to a Hub dataset repo")
    push.add_argument("run_dir")
    push.add_argument("--repo", required=True, metavar="OWNER/NAME")
    push.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    push.add_argument("--revision", default="main", metavar="BRANCH", help="branch to commit to")
    push.add_argument("--dry-run", action="store_true", help="list what would be uploaded; upload nothing")
    _card_args(push)
    export = sub.add_parser("export", help="write a finished run's triplets (GME or MegaPairs) in a training format")
    export.add_argument("run_dir")
    export.add_argument("--format", required=True, choices=["ms-swift", "mmeb", "mbeir", "gme", "megapairs"])
    export.add_argument("--out", required=True, metavar="DIR", help="folder to write (images go to DIR/images/)")
    export.add_argument("--force", action="store_true", help="write over a folder holding other files")
    export.add_argument("--ms-swift-legacy", action="store_true",
                        help="ms-swift before v3.9: query / response / rejected_response")
    export.add_argument("--negatives", type=int, metavar="N",
                        help="keep each row's N hardest negatives; rows with fewer are dropped")
    export.add_argument("--instructions", choices=["first", "all"], default="first",
                        help="MegaPairs runs to ms-swift / mmeb: one row per pair with its first instruction "
                             "(default), or one per (pair, instruction)")
    gc = sub.add_parser("gc", help="remove stored images no stage output of a run refers to any more")
    gc.add_argument("run_dir")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    validate = sub.add_parser("validate", help="check an export (any format) or a run's export folder")
    validate.add_argument("dir")
    validate.add_argument("--max-problems", type=int, default=20, metavar="N", help="violations listed (default 20)")
    evaluate = sub.add_parser("eval", help="fine-tune a small retriever on a run's triplets and report the gain")
    evaluate.add_argument("run_dir", help="a finished run dir, or an export folder in any format fusegen writes")
    evaluate.add_argument("--config", help="eval config YAML (default: the built-in CPU config; configs/eval-gpu.yaml)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override an eval config value, e.g. --set train.steps=50")
    evaluate.add_argument("--out", metavar="DIR", help="where report.json and the plot go (default RUN_DIR/eval)")
    render = sub.add_parser("render-prompt", help="print the chat messages a stage would send for one row")
    render.add_argument("stage", help="stage name, e.g. doc2query")
    render.add_argument("--row", required=True, help="JSON file with one input row")
    render.add_argument("--prompts-dir", help="prompt folder (default: the package's prompts/)")
    args = parser.parse_args(argv)
    if args.cmd == "render-prompt":
        return _render_prompt(args, render)
    try:
        return COMMANDS[args.cmd](args)
    except PipelineError as exc:
        print(f"fusegen: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from pipeline.rundir import RunContext
    from pipeline.runner import run_pipeline
    from pipeline.settings import build_stages, load_config
    from pipeline.status import format_status

    if args.dry_run:
        return _plan_config(args.config, args.overrides, None)

    if args.push:
        from pipeline.io.hub import check_repo_id, resolve_token

        # Fail before hours of work, not after: a bad name or a missing token is known now.
        check_repo_id(args.push)
        resolve_token()
    config = load_config(args.config, args.overrides)
    ctx = RunContext.create(config, args.run_dir, args.force, args.index_dir)
    stages = build_stages(config, ctx)
    results = run_pipeline(ctx, stages)
    print(format_status(ctx.run_fs))
    print(output_line(ctx.run_fs, stages, results))
    if args.push:
        return _push_to(ctx.run_uri, args.push)
    return 0


def _plan(args) -> int:
    return _plan_config(args.config, args.overrides, args.cluster)


def _plan_config(path: str, overrides: list[str], cluster: str | None) -> int:
    """Print the stages' worker pools against the nodes; a plan the nodes cannot start is an error
    naming each stage and what it lacks (the check a run makes before any work)."""
    from pipeline.errors import StageUnschedulableError
    from pipeline.rundir import RunContext
    from pipeline.runner import stage_plan
    from pipeline.scheduling import format_plan, plan_error, plan_problems
    from pipeline.settings import build_stages, load_config

    config = load_config(path, overrides)
    # Nothing is written: the context only names where a run would go.
    plan = stage_plan(build_stages(config, RunContext.create(config)))
    if cluster is None:
        from pipeline.raycluster import cluster_nodes

        nodes = cluster_nodes(config.ray)
    else:
        nodes = _cluster_nodes(cluster)
    print(f"plan: {path} (pipeline {config.pipeline})")
    print("\n".join(format_plan(plan, nodes)))
    problems = plan_problems(plan, nodes)
    if problems:
        raise StageUnschedulableError(plan_error(problems, nodes, "checked once; a run waits up to "
                                                                  "`ray.schedule_grace_s` on a cluster it joins"))
    print("plan: every stage can start on these nodes")
    return 0


def _cluster_nodes(text: str) -> list[dict]:
    """`--cluster`: a JSON list (inline or in a file) of node resources, or of `ray.nodes()` entries."""
    from pathlib import Path

    source = Path(text).read_text(encoding="utf-8") if not text.lstrip().startswith("[") else text
    try:
        nodes = json.loads(source)
    except json.JSONDecodeError as exc:
        raise PipelineConfigError(f"--cluster: not a JSON list of nodes ({exc}); e.g. '[{{\"CPU\": 96, \"GPU\": 8}}]'") from None
    ok = isinstance(nodes, list) and all(isinstance(n, dict) for n in nodes)
    if not ok or not all(isinstance(v, (int, float)) for n in nodes for v in n.get("Resources", n).values()):
        raise PipelineConfigError(f"--cluster: must be a JSON list of objects of resource amounts, e.g. "
                                  f"'[{{\"CPU\": 96, \"GPU\": 8}}]' (got {source[:200]!r})")
    return [n if "Resources" in n else {"NodeManagerAddress": f"node{i}", "Resources": n}
            for i, n in enumerate(nodes, start=1)]


def _index_images(args) -> int:
    from pipeline.rundir import RunContext
    from pipeline.runner import build_index
    from pipeline.settings import load_config
    from pipeline.stages.images import Images

    config = load_config(args.config, [*args.overrides, f"images.pool.path={args.pool}"])
    ctx = RunContext.create(config, args.out, index_dir=args.out)
    stage = Images(config.sections["images"], ctx, "images")
    stage.prepare()
    specs = stage.indexes()
    if not specs:
        raise PipelineConfigError("index-images: the config's images.sources does not include `retrieval`")
    handle = build_index(ctx, stage, specs[0], {})
    print(f"image index: {handle.count} images in {ctx.index_uri}/{handle.folder}")
    print(f"reuse it: fusegen run CONFIG --index-dir {args.out} (same pool, retriever and models)")
    return 0


def _card_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--license", default="other", help="Hub license id of the corpus, e.g. cc-by-sa-4.0")
    p.add_argument("--examples", type=int, default=4, help="example rows shown in the card")
    p.add_argument("--seed", type=int, default=0, help="seed that picks the example rows")


def _card_config(args, repo: str | None = None):
    from pipeline.card import CardConfig

    return CardConfig(license=args.license, examples=args.examples, seed=args.seed, repo=repo or "OWNER/NAME")


def _card(args) -> int:
    from pipeline.card import build_card

    print(f"card: {build_card(args.run_dir, _card_config(args))}")
    return 0


def _push(args) -> int:
    from pipeline.publish import PushConfig, push_run

    cfg = PushConfig(repo=args.repo, revision=args.revision, private=args.private, dry_run=args.dry_run,
                     card=_card_config(args, args.repo))
    report = push_run(args.run_dir, cfg)
    verb = "would upload" if args.dry_run else "uploaded"
    for path in report.uploaded:
        print(f"{verb}: {path}")
    for path in report.deleted:
        print(f"{'would delete' if args.dry_run else 'deleted'}: {path}")
    seen = "" if report.remote_checked else " (remote not checked: no token)"
    done = "to upload" if args.dry_run else "uploaded"
    gone = "to delete" if args.dry_run else "deleted"
    print(f"push: {len(report.uploaded)} file(s) {done}{seen}, {len(report.deleted)} {gone}, "
          f"{len(report.unchanged)} already on the Hub, {report.commits} commit(s) to {args.repo}@{args.revision}")
    return 0


def _push_to(run_dir: str, repo: str) -> int:
    from pipeline.card import CardConfig
    from pipeline.publish import PushConfig, push_run

    report = push_run(run_dir, PushConfig(repo=repo, card=CardConfig(repo=repo)))
    print(f"push: {len(report.uploaded)} file(s) uploaded, {len(report.deleted)} deleted, "
          f"{len(report.unchanged)} unchanged, to {repo}")
    return 0


def output_line(run_fs, stages, results) -> str:
    """Where the dataset is, or, when no row reached export, which stage dropped the last rows."""
    from pipeline.rundir import stage_dirs

    for (folder, _), result in zip(stage_dirs(stages), results):
        if result.manifest.get("rows", {}).get("out", 1) == 0:
            return (
                f"output: none. No row got past the {result.name} stage (see its top reasons above; "
                f"the dropped rows and their reasons are in {run_fs.path(folder)}/_rejects)."
            )
    return f"output: {run_fs.path('export/data')}"


def _gc(args) -> int:
    """Runs also collect this garbage when they finish; this is for a run dir left as it is."""
    from pipeline.io.fs import RunFS
    from pipeline.io.runlock import run_lock

    run_fs = RunFS.from_uri(args.run_dir)
    if not run_fs.exists("run.yaml"):
        raise PipelineConfigError(f"{args.run_dir} is not a fusegen run directory (no run.yaml)")
    # A live run's images are stored before any part refers to them: never collect under it.
    with run_lock(run_fs, "fusegen gc"):
        _collect(run_fs, args.dry_run)
    return 0


def _collect(run_fs, dry_run: bool) -> None:
    from pipeline.io.fs import RunFS
    from pipeline.io.image_store import collect_store_garbage, store_garbage
    from pipeline.rundir import INDEX_DIR

    # The run's store, and the store of its own index folder (pool images; a shared --index-dir is
    # not the run's to clean).
    for what, store_fs in (("image store", run_fs), ("index image store", RunFS(run_fs.fs, run_fs.path(INDEX_DIR)))):
        garbage = store_garbage(store_fs, keep=20) if dry_run else collect_store_garbage(store_fs, keep=20)
        for rel in garbage.files:
            print(f"  {rel}")
        if garbage.count > len(garbage.files):
            print(f"  ... and {garbage.count - len(garbage.files)} more")
        verb = "would remove" if dry_run else "removed"
        print(f"{what}: {verb} {garbage.count} file(s), {garbage.bytes / 2**20:.1f} MiB")


def _status(args) -> int:
    from pipeline.io.fs import RunFS
    from pipeline.status import collect_manifests, format_status

    run_fs = RunFS.from_uri(args.run_dir)
    if args.json:
        print(json.dumps(collect_manifests(run_fs), indent=2))
    else:
        print(format_status(run_fs))
    return 0


def _stages(args) -> int:
    from pipeline.tracks import TRACKS

    if args.track and args.track not in TRACKS:
        raise PipelineConfigError(f"unknown track {args.track!r}; tracks: {', '.join(TRACKS)}")
    for track, sections in TRACKS.items():
        if args.track and track != args.track:
            continue
        print(f"pipeline {track}: {' -> '.join(name for name, _ in sections)}")
        for name, cls in sections:
            doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
            print(f"\n  {name} ({cls.__name__}): {doc}")
            print(f"    inputs:  {', '.join(cls.input_columns) or '(corpus files)'}")
            print(f"    outputs: {', '.join(cls.output_columns) or '(the input columns)'}")
        print()
    return 0


def _tiny(args) -> int:
    from pipeline.models.tiny import build_all

    for name, path in build_all(args.dir).items():
        print(f"{name}: {path}")
    return 0


def _export(args) -> int:
    from pipeline.exporters import export_run

    marker = export_run(args.run_dir, args.format, args.out, force=args.force, legacy=args.ms_swift_legacy,
                        negatives=args.negatives, instructions=args.instructions)
    rows = ", ".join(f"{split} {n}" for split, n in marker["splits"].items())
    kept = marker["options"]["negatives_kept"]
    negatives = "as the run wrote them" if kept is None else f"{kept} per row"
    print(f"export: {args.format} to {os.path.abspath(args.out)}: {rows} rows; negatives {negatives}; "
          f"{marker['dropped']['fewer_negatives']} row(s) dropped for fewer negatives; {marker['images']} image file(s)")
    if args.format == "ms-swift":
        from pipeline.exporters.ms_swift import train_command

        print(f"train it (also in {os.path.join(os.path.abspath(args.out), 'README.md')}):\n{train_command(args.out)}")
    elif args.format == "mmeb":
        print(f"train it with VLM2Vec: the --dataset_config entry in {os.path.join(os.path.abspath(args.out), 'README.md')}")
    return 0


def _validate(args) -> int:
    from pipeline.exporters.validate import validate

    report = validate(args.dir, cap=args.max_problems)
    rows = ", ".join(f"{split} {n}" for split, n in sorted(report.rows.items())) or "no rows"
    if report.ok:
        print(f"valid: {report.format} export at {report.path}: {rows}; {report.images} image(s) decoded")
        return 0
    print(f"invalid: {report.format} export at {report.path}: {report.problems.count} problem(s) ({rows})")
    for line in report.problems.first:
        print(f"  {line}")
    if report.problems.count > len(report.problems.first):
        print(f"  ... and {report.problems.count - len(report.problems.first)} more")
    return 1


def _eval(args) -> int:
    from pipeline.eval import default_out, evaluate, load_eval_config

    cfg = load_eval_config(args.config, args.overrides)
    tty = sys.stderr.isatty()

    def progress(what: str, step: int, steps: int, loss: float) -> None:
        # One line per step on a terminal (overwritten); in a log, every tenth of the steps.
        if tty:
            print(f"\reval: {what}: step {step}/{steps} loss {loss:.4f}", end="" if step < steps else "\n",
                  file=sys.stderr, flush=True)
        elif step == steps or step % max(steps // 10, 1) == 0:
            print(f"eval: {what}: step {step}/{steps} loss {loss:.4f}", file=sys.stderr, flush=True)

    report = evaluate(args.run_dir, cfg, args.out or default_out(args.run_dir), progress)
    for line in report["summary"]:
        print(line)
    print(f"eval: report {report['report']}")
    return 0


def _render_prompt(args, parser: argparse.ArgumentParser) -> int:
    from pathlib import Path

    from pipeline.prompts import default_prompts_dir
    from pipeline.stages import STAGES

    name = args.stage.split("/")[0]
    if name not in STAGES:
        parser.error(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    stage_cls = STAGES[name]
    if not stage_cls.prompt_files:
        prompted = [n for n, c in STAGES.items() if c.prompt_files]
        parser.error(f"stage {name!r} has no prompts; stages with prompts: {', '.join(prompted)}")
    try:
        row = json.loads(Path(args.row).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        parser.error(f"--row {args.row}: cannot read a JSON row from it ({exc})")
    if not isinstance(row, dict):
        parser.error(f"--row {args.row}: must hold one JSON object (a row), not a {type(row).__name__}")
    prompts_dir = Path(args.prompts_dir) if args.prompts_dir else default_prompts_dir()
    try:
        messages = stage_cls.render_row(prompts_dir, stage_cls.config_cls(), row)
    except KeyError as exc:
        parser.error(f"--row {args.row}: the row has no {exc.args[0]!r} field, which {name}'s prompt needs")
    except (TypeError, AttributeError, ValueError) as exc:
        # A field of the wrong JSON type (a number where the stage reads text, ...).
        parser.error(f"--row {args.row}: a field has the wrong type for {name}'s prompt ({type(exc).__name__}: {exc})")
    except PipelineError as exc:
        print(f"fusegen: error: {exc}", file=sys.stderr)
        return 2
    for m in messages:
        sys.stdout.write(f"--- {m['role']}\n{m['content']}\n")
    return 0


COMMANDS = {
    "run": _run, "plan": _plan, "status": _status, "stages": _stages, "make-tiny-models": _tiny, "index-images": _index_images,
    "gc": _gc,
    "card": _card, "push": _push, "export": _export, "validate": _validate, "eval": _eval,
}

if __name__ == "__main__":
    raise SystemExit(main())
