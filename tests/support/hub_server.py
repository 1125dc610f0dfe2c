"""A Hugging Face Hub-compatible server on 127.0.0.1 for push tests, driven by the real huggingface_hub.

It implements only what huggingface_hub 2.4's `create_repo`, `create_branch`, `preupload` (answering
"regular" upload mode, so files travel base64-inline in the commit and no xet/LFS storage is needed),
`create_commit` (ndjson), `list_repo_tree`, `get_paths_info`, `repo_info`, `whoami` and the card YAML
validation (`/api/validate-yaml`) call, as read from that client's source. Writes need
`Authorization: Bearer <token>`. `server.fault(method, path_part, *faults)` makes the next matching
requests fail: `Fault(status=429, retry_after="0")`, `Fault(drop=True)` (close the connection without an
answer), `Fault(drop=True, apply=True)` (apply a commit, then drop: the answer is lost). The server
records every request's method, path and headers, and every committed file (`commits`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import yaml

from tests.support.local_server import JSONHandler, LocalServer

TEST_TOKEN = "hf_fusegenTESTtoken_7f3a9c1e55"
REPO = r"/api/datasets/(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("POST", re.compile(rf"^{REPO}/branch/(?P<rev>.+)$"), "branch"),
    ("POST", re.compile(rf"^{REPO}/preupload/(?P<rev>.+)$"), "preupload"),
    ("POST", re.compile(rf"^{REPO}/commit/(?P<rev>.+)$"), "commit"),
    ("GET", re.compile(rf"^{REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?$"), "tree"),
    ("POST", re.compile(rf"^{REPO}/paths-info/(?P<rev>.+)$"), "paths_info"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate"),
    ("GET", re.compile(rf"^{REPO}(/revision/(?P<rev>.+))?$"), "info"),
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
]
LICENSES = {"other", "apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc0-1.0", "unknown"}
LIST_KEYS = ("language", "task_categories", "task_ids", "size_categories", "tags", "configs")


@dataclass(frozen=True)
class Fault:
    status: int = 0
    retry_after: str | None = None
    drop: bool = False
    apply: bool = False


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: int = 0


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def validate_card_yaml(content: str) -> list[str]:
    """The checks of the Hub's validate-yaml that fusegen's card must pass."""
    m = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
    if not m:
        return ["no YAML metadata block"]
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        return [f"YAML: {exc}"]
    errors = [] if isinstance(meta, dict) else ["metadata is not a mapping"]
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("license") not in LICENSES:
        errors.append(f"license {meta.get('license')!r} is not a known license id")
    errors += [f"{k} must be a list" for k in LIST_KEYS if k in meta and not isinstance(meta[k], list)]
    for cfg in meta.get("configs") or []:
        if not cfg.get("config_name") or not all(
            {"split", "path"} <= set(d) for d in cfg.get("data_files", [])
        ):
            errors.append(f"configs entry {cfg!r} needs config_name and data_files with split and path")
    return errors


class HubServer(LocalServer):
    """Context manager: `with HubServer(token) as hub: ... hub.endpoint ...`."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.commits: list[list[str]] = []  # paths of each applied commit, in order
        self._faults: list[tuple[str, str, Fault]] = []
        self._lock = threading.Lock()
        super().__init__(_Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fault(self, method: str, path_part: str, *faults: Fault) -> None:
        with self._lock:
            self._faults += [(method, path_part, f) for f in faults]

    def files(self, repo: str, rev: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo].branches[rev])

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for i, (m, part, f) in enumerate(self._faults):
                if m == method and part in path:
                    del self._faults[i]
                    return f
        return None

    # Routes: each returns (status, body, headers); `authed` says whether the bearer token matched.
    def create(self, body: dict, authed: bool, **_: Any) -> tuple:
        if not authed:
            return 401, {"error": "Invalid credentials in Authorization header"}, {}
        repo_id = f"{body['organization']}/{body['name']}"
        if repo_id in self.repos:
            return (
                409,
                {
                    "error": "You already created this dataset repo",
                    "url": f"{self.endpoint}/datasets/{repo_id}",
                },
                {},
            )
        self.repos[repo_id] = Repo(private=body.get("visibility") == "private")
        return 200, {"url": f"{self.endpoint}/datasets/{repo_id}", "name": repo_id}, {}

    def branch(self, repo: Repo, rev: str, authed: bool, **_: Any) -> tuple:
        if rev in repo.branches:
            return 409, {"error": "branch exists"}, {}
        repo.branches[rev] = dict(repo.branches["main"])
        return 200, {}, {}

    def preupload(self, repo: Repo, rev: str, body: dict, **_: Any) -> tuple:
        files = repo.branches.get(rev, {})
        return (
            200,
            {
                "files": [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": git_sha1(files[f["path"]]) if f["path"] in files else None,
                    }
                    for f in body["files"]
                ]
            },
            {},
        )

    def commit(self, repo: Repo, rev: str, raw: bytes, repo_id: str, **_: Any) -> tuple:
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        files = repo.branches.setdefault(rev, {})
        paths = []
        for item in lines[1:]:
            if item["key"] == "deletedFile":
                if item["value"]["path"] not in files:
                    return 404, {"error": f"{item['value']['path']} does not exist"}, {}
                del files[item["value"]["path"]]
                paths.append(f"-{item['value']['path']}")
                continue
            if item["key"] != "file":
                return 400, {"error": f"this test server accepts regular files and deletions, got {item['key']}"}, {}
            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            paths.append(item["value"]["path"])
        repo.commits += 1
        self.commits.append(paths)
        oid = hashlib.sha1(f"{repo_id}{repo.commits}".encode()).hexdigest()
        return (
            200,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self.endpoint}/datasets/{repo_id}/commit/{oid}",
            },
            {},
        )

    def tree(self, repo: Repo, rev: str, path: str | None, **_: Any) -> tuple:
        prefix = (unquote(path or "").strip("/") + "/") if path else ""
        return 200, [_entry(p, d) for p, d in sorted(repo.branches[rev].items()) if p.startswith(prefix)], {}

    def paths_info(self, repo: Repo, rev: str, form: dict, **_: Any) -> tuple:
        files = repo.branches[rev]
        return 200, [_entry(p, files[p]) for p in form.get("paths", []) if p in files], {}

    def validate(self, body: dict, **_: Any) -> tuple:
        errors = validate_card_yaml(body.get("content", ""))
        if errors:
            return 400, {"errors": [{"message": e} for e in errors], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def info(self, repo: Repo, repo_id: str, rev: str | None, **_: Any) -> tuple:
        files = repo.branches.get(rev or "main", {})
        sha = hashlib.sha1(f"{repo_id}{repo.commits}".encode()).hexdigest()
        return (
            200,
            {
                "id": repo_id,
                "sha": sha,
                "private": repo.private,
                "siblings": [{"rfilename": p} for p in files],
            },
            {},
        )

    def whoami(self, authed: bool, **_: Any) -> tuple:
        return (
            (200, {"name": "tester", "type": "user"}, {})
            if authed
            else (401, {"error": "Invalid credentials in Authorization header"}, {})
        )


def _entry(path: str, data: bytes) -> dict:
    return {"type": "file", "path": path, "size": len(data), "oid": git_sha1(data)}


class _Handler(JSONHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        hub: HubServer = self.server.owner
        url = urlparse(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        with hub._lock:
            hub.requests.append((method, url.path, headers))
        fault = hub.take_fault(method, url.path)
        if fault and fault.status:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            return self._send(fault.status, {"error": f"scripted {fault.status}"}, extra)
        if fault and fault.drop and not fault.apply:
            self.close_connection = True
            return None
        status, body, extra = self._route(hub, method, url, raw, headers)
        if fault and fault.drop:
            self.close_connection = True
            return None
        return self._send(status, body, extra)

    def _route(self, hub: HubServer, method: str, url, raw: bytes, headers: dict) -> tuple:
        authed = headers.get("authorization") == f"Bearer {hub.token}"
        for m, pattern, name in ROUTES:
            match = pattern.match(url.path) if m == method else None
            if not match:
                continue
            groups = match.groupdict()
            kwargs: dict[str, Any] = {
                "authed": authed,
                "raw": raw,
                "rev": unquote(groups.get("rev") or "main"),
            }
            kwargs["path"] = groups.get("path")
            ctype = headers.get("content-type", "")
            kwargs["body"] = json.loads(raw) if raw and "json" in ctype and "ndjson" not in ctype else {}
            kwargs["form"] = parse_qs(raw.decode()) if "form-urlencoded" in ctype else {}
            if "repo" in groups:
                repo_id = groups["repo"]
                kwargs["repo_id"] = repo_id
                if method == "POST" and not authed:
                    return 401, {"error": "Invalid credentials in Authorization header"}, {}
                if repo_id not in hub.repos:
                    return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                kwargs["repo"] = hub.repos[repo_id]
                if name not in ("branch", "info") and kwargs["rev"] not in kwargs["repo"].branches:
                    return 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"}
            with hub._lock:
                return getattr(hub, name)(**kwargs)
        return 404, {"error": f"no route {method} {url.path}"}, {}

    def _send(self, code: int, body: Any, headers: dict[str, str]) -> None:
        self.send_json(code, json.dumps(body).encode(), headers)
