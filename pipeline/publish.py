"""`fusegen push`: publish a finished run's export (data, card, card assets) to a Hub dataset repo.

Order: check the repo name and the token, rebuild the card (which refuses a run without an export or
with an unbalanced ledger), create the repo (and branch) if needed, list the remote files, and upload
only the files whose size and hash differ from the remote (so a re-run after an interruption sends
only what is missing). Files go in several commits of at most `max_commit_bytes` / `max_commit_files`
each (one big shard alone), so memory stays bounded by about one shard; the card goes last, once the
data it describes is there. Loose image files, if an exporter wrote `export/images/`, travel in a few
tar archives, never one file per image (the Hub answers 429/504 on repos with very many small files).

The remote's `data/`, `assets/` and `_hub/` mirror the local export: files there that the export no
longer has (a re-run with another split ratio or shard size) are deleted in the last commit (the
card's, when the card changed), so `load_dataset` never reads old rows beside new ones once the push is done. Other remote
files (a `.gitattributes`, files the owner added at the top) are left alone.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import dataclass, field

from pipeline.card import CardConfig, build_card
from pipeline.config import check
from pipeline.errors import PublishError
from pipeline.io.fs import RunFS
from pipeline.io.hub import (
    LocalFile,
    RetryConfig,
    check_repo_id,
    check_revision,
    hash_file,
    remote_files,
    resolve_token,
    same_as_remote,
    with_retries,
)
from pipeline.io.runlock import run_lock
from pipeline.logging import get_logger

log = get_logger(__name__)
UPLOAD_DIRS = ("data", "assets", "_hub")
IMAGES_DIR, PACKS_DIR = "images", "_hub"


@dataclass(frozen=True)
class PushConfig:
    repo: str
    revision: str = "main"
    private: bool = False
    dry_run: bool = False
    max_commit_bytes: int = 512 * 1024 * 1024
    max_commit_files: int = 64
    archive_bytes: int = 1024 * 1024 * 1024
    endpoint: str | None = None  # None: HF_ENDPOINT or huggingface.co
    retry: RetryConfig = field(default_factory=RetryConfig)
    card: CardConfig = field(default_factory=CardConfig)

    def __post_init__(self) -> None:
        check_repo_id(self.repo)
        check_revision(self.revision)
        check(
            self.max_commit_bytes > 0,
            "push",
            "max_commit_bytes",
            f"must be > 0 (got {self.max_commit_bytes})",
        )
        check(
            self.max_commit_files > 0,
            "push",
            "max_commit_files",
            f"must be > 0 (got {self.max_commit_files})",
        )


@dataclass
class PushReport:
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # Remote files under the mirrored folders the export no longer has (deleted, or to delete).
    deleted: list[str] = field(default_factory=list)
    commits: int = 0
    remote_checked: bool = True


def pack_images(export_dir: str, archive_bytes: int) -> None:
    """export/images/** -> export/_hub/images-NNNNN.tar, deterministic (sorted names, fixed metadata)
    so a re-run makes byte-identical archives and the resume check skips them."""
    root = os.path.join(export_dir, IMAGES_DIR)
    # Archives of an earlier push (other images, other grouping) must not linger in the upload.
    shutil.rmtree(os.path.join(export_dir, PACKS_DIR), ignore_errors=True)
    if not os.path.isdir(root):
        return
    names = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    groups, size = [[]], 0
    for name in names:
        n = os.path.getsize(os.path.join(root, name))
        if groups[-1] and size + n > archive_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n
    os.makedirs(os.path.join(export_dir, PACKS_DIR), exist_ok=True)
    for i, group in enumerate(g for g in groups if g):
        final = os.path.join(export_dir, PACKS_DIR, f"images-{i:05d}.tar")
        with tarfile.open(final + ".tmp", "w", format=tarfile.PAX_FORMAT) as tar:
            for name in group:
                info = tar.gettarinfo(os.path.join(root, name), arcname=f"images/{name}")
                info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
                with open(os.path.join(root, name), "rb") as f:
                    tar.addfile(info, f)
        os.replace(final + ".tmp", final)


def local_files(export_dir: str) -> list[LocalFile]:
    """What a push uploads: data/, assets/, image archives, then README.md last."""
    out = []
    for top in UPLOAD_DIRS:
        base = os.path.join(export_dir, top)
        for d, _, files in sorted(os.walk(base)):
            for f in sorted(files):
                if f.startswith(".") or f.endswith(".tmp"):
                    continue
                rel = os.path.relpath(os.path.join(d, f), export_dir).replace(os.sep, "/")
                out.append(hash_file(rel, os.path.join(d, f)))
    out.append(hash_file("README.md", os.path.join(export_dir, "README.md")))
    return out


def batches(files: list[LocalFile], max_bytes: int, max_files: int) -> list[list[LocalFile]]:
    """Consecutive groups under both limits; a file above max_bytes goes alone; README.md alone, last."""
    body = [f for f in files if f.path_in_repo != "README.md"]
    out: list[list[LocalFile]] = []
    size = 0
    for f in body:
        if not out or len(out[-1]) >= max_files or (out[-1] and size + f.size > max_bytes):
            out.append([])
            size = 0
        out[-1].append(f)
        size += f.size
    card = [f for f in files if f.path_in_repo == "README.md"]
    return out + ([card] if card else [])


def push_run(run_dir: str, cfg: PushConfig) -> PushReport:
    """Raises PublishError on anything that stops a publish (no token, bad run, Hub refusal), RunDirBusy
    while another fusegen process holds the run dir."""
    run_fs = RunFS.from_uri(run_dir)
    if "://" in run_dir:
        raise PublishError(
            f"push: {run_dir} is not a local path; copy its export/ folder locally and push that run dir"
        )
    if not run_fs.exists(""):
        raise PublishError(f"push: no run dir at {run_dir}")
    # The run dir's lock for the whole push: a run or gc would rewrite the export under the upload, and
    # a second push would write the same card and archives and commit the same files.
    with run_lock(run_fs, "fusegen push"):
        return _push_locked(run_dir, run_fs, cfg)


def _push_locked(run_dir: str, run_fs: RunFS, cfg: PushConfig) -> PushReport:
    from huggingface_hub import HfApi

    token = _login_token() if cfg.dry_run else resolve_token()
    build_card(run_dir, cfg.card)
    export_dir = run_fs.path("export")
    pack_images(export_dir, cfg.archive_bytes)
    files = local_files(export_dir)
    api = HfApi(endpoint=cfg.endpoint, token=token)
    repo, rev = cfg.repo, cfg.revision
    if not cfg.dry_run:
        _ensure_repo(api, cfg)
    # A dry run without a token cannot see the remote: it lists every file.
    remote = remote_files(api, repo, rev, cfg.retry) if token else {}
    report = PushReport(remote_checked=bool(token))
    todo = []
    for f in files:
        (report.unchanged if same_as_remote(f, remote.get(f.path_in_repo)) else todo).append(f)
    report.unchanged = [f.path_in_repo for f in report.unchanged]
    report.deleted = stale_remote(remote, files)
    if cfg.dry_run:
        report.uploaded = [f.path_in_repo for f in todo]
        return report
    groups = batches(todo, cfg.max_commit_bytes, cfg.max_commit_files)
    if report.deleted and not groups:
        groups = [[]]
    for i, group in enumerate(groups, start=1):
        deletes = report.deleted if i == len(groups) else []
        committed = with_retries(
            f"commit {i}/{len(groups)}",
            lambda g=group, n=i, d=deletes: _commit(api, cfg, g, n, len(groups), d), cfg.retry,
        )
        report.uploaded += [f.path_in_repo for f in group]
        report.commits += committed
        mib = sum(f.size for f in group) // (1 << 20)
        log.info("push: commit %d/%d: %d file(s), %d MiB", i, len(groups), len(group), mib)
    return report


def stale_remote(remote: dict, files: list[LocalFile]) -> list[str]:
    """Remote files under the mirrored folders that the local export does not have."""
    local = {f.path_in_repo for f in files}
    return sorted(p for p in remote if p.split("/", 1)[0] in UPLOAD_DIRS and p not in local)


def _ensure_repo(api, cfg: PushConfig) -> None:
    """Create the dataset repo and the branch when missing (neither call is retried by the client)."""
    with_retries(
        "creating the repo",
        lambda: api.create_repo(cfg.repo, repo_type="dataset", private=cfg.private, exist_ok=True),
        cfg.retry,
    )
    if cfg.revision != "main":
        with_retries(
            "creating the branch",
            lambda: api.create_branch(cfg.repo, branch=cfg.revision, repo_type="dataset", exist_ok=True),
            cfg.retry,
        )


def _login_token() -> str | None:
    from huggingface_hub import constants, get_token

    return None if constants.HF_HUB_OFFLINE else get_token()


def _commit(api, cfg: PushConfig, group: list[LocalFile], n: int, total: int, deletes: list[str] = ()) -> bool:
    """One commit of the files of `group` the remote does not hold yet, and the deletion of `deletes`
    still there. It asks the remote again first: a commit whose answer was lost (dropped connection)
    may have landed, and must not be sent twice."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    there = remote_files(api, cfg.repo, cfg.revision, cfg.retry, [f.path_in_repo for f in group] + list(deletes))
    missing = [f for f in group if not same_as_remote(f, there.get(f.path_in_repo))]
    gone = [p for p in deletes if p in there]
    if not missing and not gone:
        return False
    ops = [CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=f.local_path) for f in missing]
    ops += [CommitOperationDelete(path_in_repo=p) for p in gone]
    try:
        api.create_commit(
            cfg.repo,
            ops,
            commit_message=f"fusegen push ({n}/{total})",
            repo_type="dataset",
            revision=cfg.revision,
        )
    except ValueError as exc:
        # huggingface_hub checks README.md's metadata with the Hub before sending anything.
        if "README.md" not in str(exc):
            raise
        raise PublishError(f"push: the Hub refused the card's metadata: {exc} (check --license)") from None
    return True
