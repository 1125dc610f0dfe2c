"""The whole GME track under seeded faults (tests/e2e/test_fault_resume.py): plans, runs, comparisons.

The LLM stages are answered by tests/support/grounded_llm.py's `GroundedLLM` (deterministic, from the
passage it is sent: every stage gets rows and two runs of the same corpus give the same rows).
`draw_plan(seed, shards)` turns a seed into one fault (its kind cycles with the seed, so N >= 7 seeds cover every kind; the stage and
shard come from the seeded RNG among the shards the clean run committed). `snapshot(run_dir)` is what
must equal between the clean and the faulted run: per stage, the sorted ids and a content hash of the
kept rows and of the rejects (with their reasons), and the image store's files by content.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pyarrow.parquet as pq

KEY_ENV = "FUSEGEN_TEST_KEY"
# A piece file the committer names in a marker: `<prefix>-<shard>-<first row>-<slot>.parquet`.
# A part or reject a worker wrote (`...-<slot>.parquet`), a dedup rewrite wrote (`d`) or a worker held (`s`).
PIECE = re.compile(r"^[a-z_]+-\d{6}-\d{6}-\d{3}[ds]?\.parquet$")
KEY = "sk-fault-test"
STAGES = ("ingest", "doc2query", "consistency", "entities", "images", "clip_filter", "gme_score", "negatives",
          "export")
# The model actor class of each stage that has one, with this module's config (openai LLM stages).
ACTORS = {"doc2query": "OpenAIChatFn", "consistency": "ConsistencyFn", "images": "ImagesFn",
          "clip_filter": "ClipScoreFn", "gme_score": "GmeScoreFn", "negatives": "NegativesFn"}
# A plan's fault kinds: the product's (pipeline/faults.py) plus `job_stop`, which the test does itself
# (`ray job stop` once the fault's shard is committed). `actor_kill` is the product's `kill` aimed at a
# stage's model actor; `driver_kill` its `kill_after_write` aimed at a shard's commit marker.
KINDS = ("raise", "kill", "actor_kill", "write_error", "read_error", "driver_kill", "job_stop")


def job_args(run_dir: Path, cache: Path, base_url: str) -> list[str]:
    """`fusegen run` arguments: the demo config, the whole GME track, both LLM stages on `base_url`."""
    sets = [
        f"cache_dir={cache}", "consistency.top_k=10", "export.validation_ratio=0.3",
        "doc2query.llm.backend=openai", "doc2query.llm.model=served-qwen", f"doc2query.llm.base_url={base_url}",
        f"doc2query.llm.api_key_env={KEY_ENV}", "doc2query.llm.retry_backoff_s=0.01",
        "entities.llm.backend=openai", "entities.llm.model=served-qwen", f"entities.llm.base_url={base_url}",
        f"entities.llm.api_key_env={KEY_ENV}", "entities.repair=none",
        # One actor per model stage: the 2-CPU session cluster runs the track without waiting for CPUs.
        "doc2query.resources.concurrency=1", "entities.resources.concurrency=1",
    ]
    return ["configs/demo.yaml", "--run-dir", str(run_dir), *[x for s in sets for x in ("--set", s)]]


def stage_folders(run_dir: Path) -> dict[str, Path]:
    """Stage name -> its folder (`02_doc2query`, `export`)."""
    out = {}
    for folder in run_dir.iterdir():
        if (folder / "_manifest.json").exists():
            out[json.loads((folder / "_manifest.json").read_text())["stage"]] = folder
    return out


def all_folders(run_dir: Path) -> dict[str, Path]:
    """The stage folders and the run's own index folders (`_index/<name>-<key>`, their embed stages)."""
    index = run_dir / "_index"
    extra = {f"_index/{p.name}": p for p in sorted(index.iterdir()) if (p / "_manifest.json").exists()} \
        if index.exists() else {}
    return {**stage_folders(run_dir), **extra}


def committed_shards(run_dir: Path) -> dict[str, list[str]]:
    return {stage: sorted(p.stem for p in (folder / "_parts").glob("*.json"))
            for stage, folder in stage_folders(run_dir).items()}


def draw_plan(seed: int, shards: dict[str, list[str]], stages: tuple[str, ...] = STAGES,
              actors: dict[str, str] | None = None) -> dict:
    """One fault for `seed`: kind by the seed (cycling through KINDS), stage and shard by its RNG. On a
    track without model actors an `actor_kill` becomes a `kill` of the worker writing the shard."""
    actors = ACTORS if actors is None else actors
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    if kind == "actor_kill" and not actors:
        kind = "kill"
    candidates = [s for s in stages if shards.get(s) and (kind != "actor_kill" or s in actors)]
    if kind == "read_error":
        # A stage's files are read when the next stage reads them: not the last stage.
        candidates = [s for s in candidates if s != stages[-1]]
    stage = rng.choice(candidates)
    shard = rng.choice(shards[stage])
    fault = {"kind": kind, "where": stage, "shard": shard}
    if kind == "actor_kill":
        fault = {"kind": "kill", "where": actors[stage], "shard": shard}
    elif kind == "driver_kill":
        fault = {"kind": "kill_after_write", "where": f"{stage}/_parts", "shard": f"{shard}.json"}
    return {"seed": seed, "kind": kind, "stage": stage, "faults": [fault] if kind != "job_stop" else [],
            "job_stop": {"stage": stage, "shard": shard} if kind == "job_stop" else None}


# The short track (tests/support/tracks.py: ingest, two pure tag stages, export), submitted through a
# `python -c` entrypoint that registers it before the CLI runs (the CLI knows only the product's tracks).
SHORT_STAGES = ("ingest", "tag_a", "tag_b", "export")
SHORT_ENTRY = ["python", "-c", "import sys, tests.support.tracks; from pipeline.cli import main; sys.exit(main())"]


def short_track_args(root: Path, cache: Path, rows: int = 30) -> list[str]:
    """Write a corpus and a config for the short track under `root`; the `fusegen run` arguments."""
    from tests.support.tracks import TRACK

    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "c.jsonl"
    texts = [f"Passage number {i}." if i % 7 else f"SKIP passage {i}." for i in range(rows)]
    ids = [f"d{i}" for i in range(rows)]
    # Ingest's dedup in 8-row shards: a repeat inside a shard (held by its worker), one across shards (a
    # rewrite), an id reused inside a shard, and a row held beside a reused id of an earlier shard that
    # must come back (17 reuses d3, so 18, held as 17's repeat, is the first of its text).
    texts[5], texts[12], ids[21] = texts[4], texts[2], ids[20]
    ids[17], texts[18] = ids[3], texts[17]
    corpus.write_text("".join(json.dumps({"doc_id": d, "text": t}) + "\n" for d, t in zip(ids, texts)))
    config = root / "track.yaml"
    config.write_text(
        f"pipeline: {TRACK}\ncache_dir: {cache}\ningest: {{path: {corpus}, resources: {{shard_rows: 8}}}}\n"
        "tag_a: {column: a, value: one, resources: {shard_rows: 4}}\n"
        "tag_b: {column: b, fanout: 2, resources: {shard_rows: 4}}\nexport: {schema: passthrough}\n"
    )
    return [str(config)]


def _rows_digest(rows: list[dict]) -> str:
    blob = json.dumps(sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=repr)),
                      sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read(folder: Path) -> list[dict]:
    files = sorted(p for p in folder.glob("*.parquet"))
    rows = []
    for path in files:
        rows += pq.read_table(path).to_pylist()
    return rows


def _image_hashes(rows: list[dict]) -> list[dict]:
    """Exported image structs carry bytes: compare them by hash."""
    for row in rows:
        for key, value in list(row.items()):
            if isinstance(value, dict) and isinstance(value.get("bytes"), bytes):
                row[key] = hashlib.sha256(value["bytes"]).hexdigest()
            elif isinstance(value, bytes):
                row[key] = hashlib.sha256(value).hexdigest()
    return rows


def snapshot(run_dir: Path) -> dict:
    """Per stage: (sorted kept ids, kept-rows hash, sorted (reject id, reason), rejects hash, ledger)."""
    out = {}
    for stage, folder in stage_folders(run_dir).items():
        manifest = json.loads((folder / "_manifest.json").read_text())
        kept_dir = folder / "data" if stage == "export" else folder
        kept = _image_hashes(_read(kept_dir))
        rejects = _read(folder / "_rejects")
        out[stage] = {
            "ids": sorted(str(r.get("id")) for r in kept),
            "kept_hash": _rows_digest(kept),
            "rejects": sorted((str(r["id"]), r["reason"]) for r in rejects),
            "rejects_hash": _rows_digest(rejects),
            "rows": manifest["rows"],
            "reasons": manifest["reasons"],
        }
    out["_images"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in sorted((run_dir / "_images").rglob("*.*"))}
    return out


def ledger_problems(run_dir: Path) -> list[str]:
    """Stages whose manifest is not complete or whose ledger does not balance (empty: all good)."""
    problems = []
    for stage, folder in all_folders(run_dir).items():
        m = json.loads((folder / "_manifest.json").read_text())
        rows = m["rows"]
        if m["status"] != "complete":
            problems.append(f"{stage}: status {m['status']}")
        if rows["in"] != rows["out"] + rows["filtered"] + rows["rejected"]:
            problems.append(f"{stage}: in {rows['in']} != out+filtered+rejected {rows}")
        if sum(m["reasons"].values()) != rows["filtered"] + rows["rejected"]:
            problems.append(f"{stage}: reasons {m['reasons']} do not add up to the dropped rows")
    return problems


def leftovers(run_dir: Path) -> list[str]:
    """Temporaries anywhere in the run dir, and part or reject files (`<prefix>-<shard>-...parquet`) that no
    marker names, in every stage and index folder (an index's markers name files under `_index/`)."""
    left = [str(p) for p in run_dir.rglob(".*.tmp")]
    for name, folder in all_folders(run_dir).items():
        base = run_dir / "_index" if name.startswith("_index/") else run_dir
        named = set()
        for marker in (folder / "_parts").glob("*.json"):
            files = json.loads(marker.read_text())["files"]
            named |= {(base / f).resolve() for f in files["parts"] + files["rejects"]}
        left += [str(p) for p in folder.rglob("*.parquet")
                 if PIECE.match(p.name) and "_parts" not in p.parts and p.resolve() not in named]
    return left
