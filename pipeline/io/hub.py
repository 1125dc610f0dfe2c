"""The Hugging Face Hub side of `fusegen push`: token, names, retries, and what the remote holds.

The token comes only from `HF_TOKEN` or the user's `hf auth login` (huggingface_hub's `get_token`); it
is handed to the client and never printed, logged or written. huggingface_hub retries its pre-upload
and listing calls itself but not `create_repo`, `create_branch` or the commit call (DESIGN §7), so every
call here goes through `with_retries`: 429, 5xx and dropped connections are retried with exponential
backoff (honouring Retry-After); other HTTP errors become a PublishError that says what to do.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from pipeline.config import check
from pipeline.errors import PublishError
from pipeline.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")
# The Hub's rule (huggingface_hub's REPO_ID_REGEX) plus ours: exactly OWNER/NAME.
_PART = re.compile(r"^(?![.-])[A-Za-z0-9_.\-]{1,96}(?<![.-])$")
_BRANCH = re.compile(r"^(?!/)(?!.*//)(?!.*\.\.)(?!refs/)[A-Za-z0-9._/\-]{1,200}(?<![/.])$")


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = 8
    base_wait_s: float = 1.0
    max_wait_s: float = 60.0

    def __post_init__(self) -> None:
        check(self.max_attempts >= 1, "push", "retry.max_attempts", f"must be >= 1 (got {self.max_attempts})")
        check(
            0 <= self.base_wait_s <= self.max_wait_s,
            "push",
            "retry.base_wait_s",
            f"must be within 0..max_wait_s (got {self.base_wait_s})",
        )


def check_repo_id(repo_id: str) -> str:
    """OWNER/NAME with the Hub's characters; raises PublishError naming the bad part."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    bad = len(parts) != 2 or not all(_PART.match(p) and "--" not in p and ".." not in p for p in parts)
    if bad or repo_id.endswith(".git"):
        raise PublishError(
            f"push: --repo {repo_id!r} is not a Hub repo id: use OWNER/NAME with letters, digits, '-', '_' "
            "or '.', not starting or ending with '-' or '.', no '--' or '..', at most 96 characters each"
        )
    return repo_id


def check_revision(revision: str) -> str:
    if not _BRANCH.match(revision or ""):
        raise PublishError(
            f"push: --revision {revision!r} is not a valid branch name (letters, digits, . _ - /)"
        )
    return revision


def resolve_token() -> str:
    """HF_TOKEN, else the token of `hf auth login`; a clear error before any upload when neither exists."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise PublishError("push: HF_HUB_OFFLINE is set; unset it to reach the Hub")
    token = get_token()
    if not token:
        raise PublishError(
            "push: no Hugging Face token: export HF_TOKEN=<a token with write access> or run `hf auth login`"
        )
    return token


def status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def is_transient(exc: BaseException) -> bool:
    import httpx2

    code = status_of(exc)
    if code is not None:
        return code == 429 or code >= 500
    return isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError))


def _wait(cfg: RetryConfig) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        response = getattr(exc, "response", None)
        after = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
        if after is not None:
            try:
                return min(float(after), cfg.max_wait_s)
            except ValueError:
                pass
        return min(cfg.base_wait_s * 2 ** (state.attempt_number - 1), cfg.max_wait_s)

    return wait


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception()
        log.warning("%s: %s (attempt %d), retrying", what, _describe(exc), state.attempt_number)

    return before_sleep


def _describe(exc: BaseException) -> str:
    code = status_of(exc)
    return f"HTTP {code}" if code is not None else type(exc).__name__


def with_retries(what: str, fn: Callable[[], T], cfg: RetryConfig) -> T:
    """Run `fn`, retrying transient Hub failures; a refusal becomes a PublishError."""
    retrying = Retrying(
        stop=stop_after_attempt(cfg.max_attempts),
        wait=_wait(cfg),
        retry=retry_if_exception(is_transient),
        before_sleep=_log_retry(what),
        reraise=True,
    )
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return retrying(fn)
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
        raise PublishError(_explain(what, exc)) from None


def _explain(what: str, exc: BaseException) -> str:
    code = status_of(exc)
    hint = {
        401: "the Hub refused the token: check that HF_TOKEN (or your `hf auth login`) is valid",
        403: "the token has no write access to this repo or namespace: use a write token or another --repo",
        404: "repo or revision not found: check --repo / --revision and that the token can see the repo",
        429: "the Hub kept rate-limiting; wait and re-run `fusegen push` (it resumes)",
    }.get(code or 0)
    if hint is None and (code is not None and code >= 500 or is_transient(exc)):
        hint = "the Hub kept failing; re-run `fusegen push` later (it resumes and skips finished files)"
    if hint is None:
        hint = str(exc).splitlines()[0][:300]
    return f"push: {what} failed ({_describe(exc)}): {hint}"


@dataclass(frozen=True)
class LocalFile:
    path_in_repo: str
    local_path: str
    size: int
    sha256: str
    git_sha1: str


def hash_file(path_in_repo: str, local_path: str, chunk: int = 1 << 20) -> LocalFile:
    """sha256 (an LFS/xet file's id) and the git blob sha1 (a regular file's id), one streamed read."""
    import os

    size = os.path.getsize(local_path)
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    sha1.update(f"blob {size}\0".encode())
    with open(local_path, "rb") as f:
        while block := f.read(chunk):
            sha256.update(block)
            sha1.update(block)
    return LocalFile(path_in_repo, local_path, size, sha256.hexdigest(), sha1.hexdigest())


def same_as_remote(local: LocalFile, remote) -> bool:
    """A remote RepoFile holds the same bytes: equal size and equal sha256 (LFS/xet) or blob sha1."""
    if remote is None or getattr(remote, "size", None) != local.size:
        return False
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        return lfs.sha256 == local.sha256
    return getattr(remote, "blob_id", None) == local.git_sha1


def remote_files(api, repo_id: str, revision: str, cfg: RetryConfig, paths: list[str] | None = None) -> dict:
    """path -> RepoFile on the remote revision; empty when the repo or the revision does not exist yet."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    def fetch() -> dict:
        try:
            if paths is None:
                items = api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True)
            else:
                items = api.get_paths_info(repo_id, paths, repo_type="dataset", revision=revision)
            return {i.path: i for i in items if hasattr(i, "blob_id")}
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return {}

    return with_retries("listing the remote files", fetch, cfg)
