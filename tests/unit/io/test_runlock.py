"""pipeline/io/runlock.py: one process on a run dir at a time; a dead holder's lock is taken over.

The holder is a real second process (a Python child holding the lock), as a resubmitted run or a
`fusegen gc` would meet it; no Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipeline.cli import main as cli
from pipeline.io.fs import RunFS
from pipeline.io.runlock import LEASE, LOCK_FILE, RunDirBusy, run_lock

REPO = Path(__file__).resolve().parents[3]
HOLD = """
import sys, time
from pipeline.io.fs import RunFS
from pipeline.io.runlock import run_lock
with run_lock(RunFS.from_uri(sys.argv[1]), "fusegen run"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A child process holding the lock of tmp_path/run; yields (run dir, process)."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    yield run, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_second_process_is_refused_with_the_holder_named(holder):
    run, proc = holder
    with pytest.raises(RunDirBusy) as err, run_lock(RunFS.from_uri(str(run)), "fusegen run"):
        pass
    assert f"pid {proc.pid}" in str(err.value) and "`fusegen run`" in str(err.value)
    assert "--force does not override" in str(err.value)


def test_the_lock_of_a_holder_killed_with_sigkill_is_taken_over(holder):
    run, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with run_lock(RunFS.from_uri(str(run)), "fusegen gc") as mine:
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid() == mine["pid"]


def test_fusegen_gc_refuses_a_live_run_and_collects_nothing(holder, capsys):
    run, proc = holder
    (run / "run.yaml").write_text("pipeline: gme\n")
    stray = run / "_images" / "ab" / ("ab" + "0" * 62 + ".png")
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"stored, not yet referenced")
    assert cli(["gc", str(run)]) == 2
    assert f"pid {proc.pid}" in capsys.readouterr().err
    assert stray.exists()


def test_the_lock_is_released_when_the_block_ends(tmp_path):
    fs = RunFS.from_uri(str(tmp_path / "run"))
    # Held: a second holder (another open of the lock file, as another process makes) is refused...
    with run_lock(fs, "fusegen run"), pytest.raises(RunDirBusy), run_lock(fs, "fusegen gc"):
        pass
    # ...and once the block has ended, taken.
    with run_lock(fs, "fusegen gc") as again:
        assert again["pid"] == os.getpid()


# --- object stores: a lease with a heartbeat ---------------------------------------------------------------


def remote(tmp_path) -> RunFS:
    """A run dir on a filesystem that is not LocalFileSystem, as s3:// or gs:// would be."""
    (tmp_path / "bucket").mkdir(exist_ok=True)
    return RunFS(pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem()), "runs/demo")


def test_a_live_lease_refuses_a_second_holder(tmp_path):
    fs = remote(tmp_path)
    with run_lock(fs, "fusegen run", heartbeat_s=0.2) as mine, \
            pytest.raises(RunDirBusy, match=f"pid {mine['pid']}"), run_lock(fs, "fusegen gc"):
        pass


def test_a_lease_whose_heartbeat_stopped_is_taken_over_and_removed_at_the_end(tmp_path):
    fs = remote(tmp_path)
    fs.write_json(LEASE, {"owner": "dead", "pid": 999999, "host": "gone", "heartbeat": time.time() - 600})
    with run_lock(fs, "fusegen run", ttl_s=120, heartbeat_s=0.2) as mine:
        assert fs.read_json(LEASE)["owner"] == mine["owner"]
    assert not fs.exists(LEASE)


def test_the_heartbeat_renews_the_lease_while_it_is_held(tmp_path):
    fs = remote(tmp_path)
    with run_lock(fs, "fusegen run", heartbeat_s=0.2):
        first = fs.read_json(LEASE)["heartbeat"]
        time.sleep(0.7)
        assert fs.read_json(LEASE)["heartbeat"] > first


def test_fusegen_run_refuses_a_live_run_dir_before_touching_it(holder, capsys):
    run, proc = holder
    (run / "run.yaml").write_text("pipeline: gme\nname: other\n")
    assert cli(["run", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(run), "--force"]) == 2
    assert f"pid {proc.pid}" in capsys.readouterr().err
    assert (run / "run.yaml").read_text() == "pipeline: gme\nname: other\n"
