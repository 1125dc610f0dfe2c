"""Declared fault injection, for the tests that prove resume (tests/e2e/test_fault_resume.py); off unless asked.

`FUSEGEN_FAULTS` names a JSON plan file, read once per process:

    {"seed": 7, "faults": [{"kind": "raise", "where": "doc2query", "shard": "000001"}, ...]}

Each fault fires at most once in all processes together (Ray runs a failed task again, and the resumed
run must get past the fault): the first process that reaches it creates `<plan>.fired-<i>` with O_EXCL
next to the plan file, and only that process fires. Kinds and where they are checked:

- `raise` / `kill`: `batch(where, table)`, on a block that holds rows of `shard`, raises InjectedFault or
  SIGKILLs its own process. `where` is a stage name (the worker's write step, `commit.write_pieces`) or a
  model class name (the actor, wrapped by `stage.actor_map`): kill -9 of a worker or an actor mid-batch.
- `write_error` / `read_error`: `storage(op, path)` in RunFS and the runner's shard reads raises OSError for
  the first matching file (the temporary of a write is left behind, as a real failed upload leaves it).
- `kill_after_write`: the writing process SIGKILLs itself right after the file is in place; on a shard's
  marker (`<stage dir>/_parts/<shard>.json`) that is kill -9 of the driver just after a commit.

A storage fault matches a path that has `/<where>/` or `_<where>/` in it and, when set, `shard` in its
last component. With FUSEGEN_FAULTS unset every hook is one global lookup and returns.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass

ENV = "FUSEGEN_FAULTS"
KINDS = ("raise", "kill", "write_error", "read_error", "kill_after_write")
BATCH_KINDS = ("raise", "kill")


class InjectedFault(RuntimeError):
    """An exception a fault plan planted in one batch (a stage that failed there)."""


@dataclass(frozen=True)
class Fault:
    kind: str
    where: str
    shard: str = ""

    def matches_path(self, path: str) -> bool:
        name = path.rsplit("/", 1)[-1]
        in_place = f"/{self.where}/" in path or f"_{self.where}/" in path
        return in_place and (not self.shard or self.shard in name)


@dataclass(frozen=True)
class Plan:
    path: str
    seed: int
    faults: tuple[Fault, ...]

    @classmethod
    def load(cls, path: str) -> Plan:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        faults = tuple(Fault(**item) for item in raw.get("faults", ()))
        bad = [f.kind for f in faults if f.kind not in KINDS]
        if bad:
            raise ValueError(f"{ENV}: unknown fault kind(s) {bad} in {path}; known: {', '.join(KINDS)}")
        return cls(path, int(raw.get("seed", 0)), faults)

    def token(self, i: int) -> str:
        return f"{self.path}.fired-{i}"

    def claim(self, i: int) -> bool:
        """True for the one process (of all) that fires fault `i`."""
        try:
            fd = os.open(self.token(i), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        return True

    def fired(self) -> list[int]:
        return [i for i in range(len(self.faults)) if os.path.exists(self.token(i))]


_UNSET = object()
_plan: object = _UNSET


def plan() -> Plan | None:
    """The process's plan, parsed on first use; None when FUSEGEN_FAULTS is unset."""
    global _plan
    if _plan is _UNSET:
        path = os.environ.get(ENV)
        _plan = Plan.load(path) if path else None
    return _plan  # type: ignore[return-value]


def active() -> bool:
    return plan() is not None


def _fire(fault: Fault, what: str) -> None:
    from pipeline.logging import get_logger

    get_logger(__name__).warning("fault injected: %s at %s (pid %d)", fault.kind, what, os.getpid())
    if fault.kind in ("kill", "kill_after_write"):
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.kind == "raise":
        raise InjectedFault(f"injected fault: {fault.kind} at {what}")
    raise OSError(f"injected fault: {fault.kind} at {what}")


def batch(where: str, table) -> None:
    """Fire a `raise`/`kill` fault planned for `where` on a block holding one of its shard's rows."""
    p = plan()
    if p is None:
        return
    from pipeline.columns import SHARD

    shards = set(table[SHARD].to_pylist()) if SHARD in table.column_names else set()
    for i, fault in enumerate(p.faults):
        if fault.kind in BATCH_KINDS and fault.where == where and fault.shard in shards and p.claim(i):
            _fire(fault, f"{where} shard {fault.shard}")


def storage(op: str, path: str) -> None:
    """Fire a `write_error` (op 'write') or `read_error` (op 'read') planned for `path`."""
    p = plan()
    if p is None:
        return
    for i, fault in enumerate(p.faults):
        if fault.kind == f"{op}_error" and fault.matches_path(path) and p.claim(i):
            _fire(fault, f"{op} of {path}")


def written(path: str) -> None:
    """After a file is in place: fire a `kill_after_write` planned for it."""
    p = plan()
    if p is None:
        return
    for i, fault in enumerate(p.faults):
        if fault.kind == "kill_after_write" and fault.matches_path(path) and p.claim(i):
            _fire(fault, f"after writing {path}")


class FaultyFn:
    """A model actor with a `batch` check before each call: how a fault plan kills an actor mid-batch.
    `stage.actor_map` uses it only while a plan is set."""

    def __init__(self, _fault_inner: type, **kwargs) -> None:
        self.where = _fault_inner.__name__
        self.inner = _fault_inner(**kwargs)

    def __call__(self, table):
        batch(self.where, table)
        return self.inner(table)
