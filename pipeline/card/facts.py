"""What a run directory says about itself, read from its files only (run.yaml, manifests, export).

`read_run` gathers the stage manifests in run order, the export's split files
(`export/data/<split>-*.parquet`), the models and prompts each stage used, and the package version.
`check_publishable` refuses a run that is not finished or whose ledger does not balance: a card or a
push must never describe rows that were lost or invented.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import PublishError
from pipeline.io.fs import RunFS
from pipeline.status import collect_manifests

EXPORT = "export"
DATA = "export/data"
_SPLIT_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-[^/]*\.parquet$")
# A model identity may pin a revision as `org/name@<rev>`.
_REVISION = re.compile(r"^(?P<id>[^\s@]+)@(?P<rev>[\w.\-]+)")


@dataclass(frozen=True)
class ModelUse:
    stage: str
    role: str
    identity: str

    @property
    def model_id(self) -> str:
        m = _REVISION.match(self.identity)
        return m.group("id") if m else self.identity

    @property
    def revision(self) -> str:
        m = _REVISION.match(self.identity)
        return m.group("rev") if m else "not pinned"


@dataclass(frozen=True)
class PromptFile:
    stage: str
    name: str
    sha256: str


@dataclass
class RunFacts:
    run_fs: RunFS
    run_yaml: dict
    manifests: list[dict]
    splits: dict[str, list[str]]  # split -> files relative to the run dir, sorted
    models: list[ModelUse] = field(default_factory=list)
    prompts: list[PromptFile] = field(default_factory=list)

    @property
    def version(self) -> str:
        return str(self.run_yaml.get("fusegen_version", "unknown"))

    @property
    def pipeline(self) -> str:
        return str(self.run_yaml.get("pipeline", "gme"))

    @property
    def export_manifest(self) -> dict:
        return next((m for m in self.manifests if m.get("stage") == "export"), {})


def split_files(run_fs: RunFS) -> dict[str, list[str]]:
    """`export/data/<split>-*.parquet` grouped by split; train first, then the others by name."""
    out: dict[str, list[str]] = {}
    for name in run_fs.listdir(DATA, ".parquet"):
        m = _SPLIT_FILE.match(name)
        if m:
            out.setdefault(m.group("split"), []).append(f"{DATA}/{name}")
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != "train", kv[0])))


def read_run(run_dir: str) -> RunFacts:
    """Raises PublishError when `run_dir` is no fusegen run or has no export yet."""
    run_fs = RunFS.from_uri(run_dir)
    if not run_fs.exists("run.yaml"):
        raise PublishError(f"{run_fs.root}: no run.yaml here; pass the run directory of a `fusegen run`")
    run_yaml = yaml.safe_load(run_fs.read_bytes("run.yaml")) or {}
    splits = split_files(run_fs)
    manifests = collect_manifests(run_fs)
    if not splits and _export_done_empty(manifests):
        raise PublishError(
            f"{run_fs.root}: the export holds no rows: no row got past the {_dry_stage(manifests)} stage "
            "(see `fusegen status RUN_DIR` for its reasons); nothing to publish"
        )
    if not splits:
        raise PublishError(
            f"{run_fs.root}: no export yet (no {DATA}/<split>-*.parquet); finish the run with "
            f"`fusegen run` (its last stage, export, writes them), then retry"
        )
    models = [
        ModelUse(m["stage"], role, str(identity))
        for m in manifests
        for role, identity in (m.get("models") or {}).items()
    ]
    return RunFacts(run_fs, run_yaml, manifests, splits, models, _prompts(run_yaml, manifests))


def _export_done_empty(manifests: list[dict]) -> bool:
    export = next((m for m in manifests if m.get("stage") == "export"), {})
    return export.get("status") == "complete" and (export.get("rows") or {}).get("out") == 0


def _dry_stage(manifests: list[dict]) -> str:
    """The first stage that emitted no row (where the funnel ran dry)."""
    return next((m["stage"] for m in manifests if (m.get("rows") or {}).get("out") == 0), "export")


def _prompts(run_yaml: dict, manifests: list[dict]) -> list[PromptFile]:
    """The prompt files of every stage: a manifest's own `prompts` record when it has one, else the
    files under the run's prompts_dir (the fingerprint covers their contents, so a changed file would
    have re-run the stage)."""
    out: list[PromptFile] = []
    root = Path(str(run_yaml.get("prompts_dir", ""))).expanduser()
    for m in manifests:
        stage = m["stage"]
        if isinstance(m.get("prompts"), dict):
            out += [PromptFile(stage, name, str(h)) for name, h in sorted(m["prompts"].items())]
            continue
        folder = root / stage
        if str(run_yaml.get("prompts_dir", "")) and folder.is_dir():
            for path in sorted(p for p in folder.iterdir() if p.is_file()):
                out.append(
                    PromptFile(stage, f"{stage}/{path.name}", hashlib.sha256(path.read_bytes()).hexdigest())
                )
    return out


def check_publishable(facts: RunFacts, data_rows: int) -> None:
    """Every stage complete, every ledger balanced, and the export's files hold what it counted."""
    problems = []
    for m in facts.manifests:
        stage, rows = m.get("stage"), m.get("rows") or {}
        if m.get("status") != "complete":
            problems.append(f"stage {stage} is {m.get('status')!r}, not complete")
            continue
        try:
            total = int(rows["out"]) + int(rows["filtered"]) + int(rows["rejected"])
            balanced = int(rows["in"]) == total
        except (KeyError, TypeError, ValueError):
            problems.append(f"stage {stage} has no usable rows record: {rows!r}")
            continue
        if not balanced:
            problems.append(
                f"stage {stage} ledger does not balance: in={rows['in']} but out+filtered+rejected={total}"
            )
    out = (facts.export_manifest.get("rows") or {}).get("out")
    if out is not None and int(out) != data_rows:
        problems.append(f"export counted {out} rows out but {DATA} holds {data_rows}")
    if problems:
        raise PublishError(
            f"{facts.run_fs.root}: refusing to publish: "
            + "; ".join(problems)
            + ". Re-run `fusegen run` on this run dir until `fusegen status` shows every stage complete."
        )
