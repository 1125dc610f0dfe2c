"""pipeline/io/locks.py: one index build at a time in a shared index dir; a dead holder frees the lock."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

from pipeline.io.fs import RunFS
from pipeline.io.locks import index_lock, lock_path


def _hold(root: str, ready, release) -> None:
    with index_lock(RunFS.from_uri(root), "image-abc"):
        ready.set()
        release.wait(60)


def _child(root: str):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(root, ready, release))
    proc.start()
    assert ready.wait(60), "the child never took the lock"
    return proc, release


def test_a_second_builder_waits_for_the_first_then_holds_the_lock(tmp_path):
    proc, release = _child(str(tmp_path))
    waited = []

    def on_wait(path: str) -> None:
        waited.append(path)
        release.set()  # the first builder finishes while we wait

    with index_lock(RunFS.from_uri(str(tmp_path)), "image-abc", on_wait) as held:
        assert held
    proc.join(60)
    assert waited == [lock_path(RunFS.from_uri(str(tmp_path)), "image-abc")]


def test_a_builder_killed_with_sigkill_leaves_no_stale_lock(tmp_path):
    proc, _ = _child(str(tmp_path))
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(60)
    waited = []
    with index_lock(RunFS.from_uri(str(tmp_path)), "image-abc", waited.append) as held:
        assert held
    assert waited == []


def test_other_folders_do_not_wait(tmp_path):
    proc, release = _child(str(tmp_path))
    waited = []
    with index_lock(RunFS.from_uri(str(tmp_path)), "gme-def", waited.append) as held:
        assert held
    release.set()
    proc.join(60)
    assert waited == []


def test_an_object_store_index_dir_is_not_locked():
    import pyarrow.fs as pafs

    fs = RunFS(pafs.SubTreeFileSystem("/tmp", pafs.LocalFileSystem()), "/bucket/index")
    with index_lock(fs, "image-abc") as held:
        assert held is False
