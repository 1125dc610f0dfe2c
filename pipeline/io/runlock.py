"""The run-dir lock: one fusegen process works on a run dir at a time.

Without it, a second `fusegen run` (a resubmit right after `ray job stop`, while the old driver is still
ending) or a `fusegen gc` on a live run would sweep the other process's uncommitted parts, collect
images stored but not yet referenced, and the old driver could overwrite the new run's manifests.

- A local run dir (NFS included: the kernel maps flock to NFS locks) is locked with an advisory `flock`
  on `RUN_DIR/.fusegen.lock`, whose contents name the holder (command, host, pid, start). The kernel
  releases it when the holder exits, `kill -9` included, so a dead holder's lock is simply taken over.
- An object-store run dir (s3://, gs://) has nothing to lock with: the holder writes a lease object
  `RUN_DIR/_lease.json` (owner, host, pid, start, heartbeat) and renews its heartbeat every
  `heartbeat_s` from a thread. A lease whose heartbeat is older than `ttl_s` belongs to a dead holder
  and is taken over; the newcomer re-reads the lease after writing it and backs off if another
  process's write won the race.
A live holder is never overridden, `--force` included: the error names it and what to do.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow.fs as pafs

from pipeline.errors import RunDirError
from pipeline.io.fs import RunFS
from pipeline.logging import get_logger

log = get_logger(__name__)
LOCK_FILE = ".fusegen.lock"
LEASE = "_lease.json"


class RunDirBusy(RunDirError):
    """Another live process holds the run dir."""


def holder_info(command: str) -> dict:
    return {"command": command, "host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "owner": uuid.uuid4().hex}


def describe(holder: dict | None) -> str:
    if not holder:
        return "another process (it has not said which yet)"
    return (f"`{holder.get('command', 'fusegen')}` (pid {holder.get('pid')} on {holder.get('host')}, "
            f"since {holder.get('started')})")


def _busy(root: str, holder: dict | None) -> RunDirBusy:
    return RunDirBusy(
        f"run dir {root} is in use by {describe(holder)}. Wait for it to end, or stop it "
        "(`ray job stop`, or end that process) and run again; --force does not override a live run."
    )


@contextmanager
def run_lock(run_fs: RunFS, command: str, ttl_s: float = 120.0, heartbeat_s: float = 20.0) -> Iterator[dict]:
    """Hold the run dir for the whole block; yields this holder's record. Raises RunDirBusy."""
    if isinstance(run_fs.fs, pafs.LocalFileSystem):
        with _flock(run_fs.root, command) as holder:
            yield holder
    else:
        with _lease(run_fs, command, ttl_s, heartbeat_s) as holder:
            yield holder


@contextmanager
def _flock(root: str, command: str) -> Iterator[dict]:
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(root, _read_holder(fd)) from None
        holder = holder_info(command)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.fsync(fd)
        yield holder
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict | None:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (ValueError, UnicodeDecodeError):
        return None


@contextmanager
def _lease(run_fs: RunFS, command: str, ttl_s: float, heartbeat_s: float) -> Iterator[dict]:
    current = run_fs.read_json(LEASE)
    if current and time.time() - float(current.get("heartbeat", 0)) < ttl_s:
        raise _busy(run_fs.root, current)
    if current:
        log.warning("run dir %s: taking over the lease of %s, silent for over %.0f s", run_fs.root,
                    describe(current), ttl_s)
    holder = {**holder_info(command), "heartbeat": time.time()}
    run_fs.write_json(LEASE, holder)
    # No compare-and-swap on an object store: whoever wrote last holds the lease; the others back off.
    time.sleep(min(1.0, heartbeat_s / 4))
    won = run_fs.read_json(LEASE)
    if not won or won.get("owner") != holder["owner"]:
        raise _busy(run_fs.root, won)
    stop = threading.Event()
    beat = threading.Thread(target=_renew, args=(run_fs, holder, heartbeat_s, stop), daemon=True,
                            name="fusegen-lease")
    beat.start()
    try:
        yield holder
    finally:
        stop.set()
        beat.join()
        now = run_fs.read_json(LEASE)
        if now and now.get("owner") == holder["owner"]:
            run_fs.delete_file(LEASE)


def _renew(run_fs: RunFS, holder: dict, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        now = run_fs.read_json(LEASE)
        if not now or now.get("owner") != holder["owner"]:
            # Taken over after a heartbeat went missing (a paused process, a partitioned node): say so loudly.
            print(f"fusegen: run dir {run_fs.root}: lease lost to {describe(now)}", file=sys.stderr)
            log.error("run dir %s: the lease was taken over by %s", run_fs.root, describe(now))
            return
        holder["heartbeat"] = time.time()
        try:
            run_fs.write_json(LEASE, holder)
        except OSError as exc:  # a throttled store: the next beat tries again, well inside ttl_s
            log.warning("run dir %s: could not renew the lease (%s); retrying in %.0f s", run_fs.root, exc, every_s)
