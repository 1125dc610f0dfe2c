"""A lock around building one index in an index dir that several runs share (`--index-dir`).

Two runs over the same pool and model build the same index folder; without a lock both would write
its parts and the second could remove the first one's files as garbage. The lock is an advisory
`flock` on a dot file beside the folder: the kernel releases it when its holder exits, so a run killed
with -9 never leaves a stale lock. The second run waits, then finds the index finished and reuses it.

Only local paths (NFS included, where the kernel maps flock to NFS locks) can be locked; on an object
store (s3://, gs://) there is nothing to lock with, so the run logs once that concurrent runs must not
build the same index at the same time.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyarrow.fs as pafs

from pipeline.io.fs import RunFS
from pipeline.logging import get_logger

log = get_logger(__name__)
_WARNED: set[str] = set()


def lock_path(index_fs: RunFS, folder: str) -> str:
    return os.path.join(index_fs.root, f".{folder}.lock")


@contextmanager
def index_lock(index_fs: RunFS, folder: str, on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold the build lock of `folder` (blocking; `on_wait(lock path)` is called once if another process
    holds it). Yields whether a lock is held (False on a filesystem that cannot lock)."""
    if not isinstance(index_fs.fs, pafs.LocalFileSystem):
        if index_fs.root not in _WARNED:
            _WARNED.add(index_fs.root)
            log.warning("index dir %s is not a local path: index builds are not locked, so two runs sharing it "
                        "must not build the same index at the same time", index_fs.root)
        yield False
        return
    os.makedirs(index_fs.root, exist_ok=True)
    path = lock_path(index_fs, folder)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            (on_wait or _log_wait)(path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


def _log_wait(path: str) -> None:
    log.info("another run is building this index (lock %s held); waiting for it, then reusing its result", path)
