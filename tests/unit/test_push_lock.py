"""`fusegen push` holds the run dir: a second push (or a run, or gc) while one is uploading is refused
naming the holder, and the interrupted push, resumed, lands every file once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pipeline.errors import PublishError
from pipeline.io.fs import RunFS
from pipeline.io.hub import RetryConfig
from pipeline.io.runlock import RunDirBusy, run_lock
from pipeline.publish import PushConfig, local_files, push_run

FAST = RetryConfig(max_attempts=2, base_wait_s=0.0)


def push(run_dir: Path, hub, **kw):
    return push_run(str(run_dir), PushConfig(repo="me/demo", endpoint=hub.endpoint, retry=FAST,
                                             max_commit_files=1, **kw))


def test_a_second_push_during_a_push_is_refused_and_the_first_resumes_to_the_whole_export(run_dir, hub):
    entered, release = threading.Event(), threading.Event()
    original = hub.commit
    calls = {"n": 0}

    def commit_hangs_then_fails(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            return original(*args, **kw)
        entered.set()
        release.wait(60)
        return 500, {"error": "server down"}, {}

    hub.commit = commit_hangs_then_fails
    failed: list[BaseException] = []

    def first() -> None:
        try:
            push(run_dir, hub)
        except PublishError as exc:
            failed.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert entered.wait(60), "the first push never reached its second commit"
        with pytest.raises(RunDirBusy, match="`fusegen push`"):
            push(run_dir, hub)
        with pytest.raises(RunDirBusy, match="`fusegen push`"), run_lock(RunFS.from_uri(str(run_dir)), "fusegen run"):
            pass
    finally:
        release.set()
        thread.join(60)
    assert failed, "the first push should have stopped on the failing commit"
    hub.commit = original
    report = push(run_dir, hub)
    tree = {f.path_in_repo: Path(f.local_path).read_bytes() for f in local_files(str(run_dir / "export"))}
    assert hub.files("me/demo") == tree
    assert "data/train-00000.parquet" in report.unchanged
