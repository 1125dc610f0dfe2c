"""`fusegen run` as a user types it on a laptop: an embedded local Ray, one bar and one line per stage,
and none of Ray's own notices that need no action."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

NOISE = (
    "Progress bars disabled",
    "The maximum number of concurrent tasks",
    "The minimum number of concurrent actors",
    "Token authentication is",
    "is very large",
    "execution finished in",
)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, repo_root):
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "c.jsonl"
    corpus.write_text("".join(json.dumps({"doc_id": f"d{i}", "text": f"Passage {i}."}) + "\n" for i in range(5)))
    # A user's shell: no cluster address, no auth setting (the embedded Ray keeps Ray's default).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    done = subprocess.run(
        ["fusegen", "run", "configs/demo.yaml", "--run-dir", str(root / "run"), "--set", "stages=[ingest, export]", "--set", "export.schema=passthrough",
         "--set", f"ingest.path={corpus}", "--set", "ingest.resources.shard_rows=2"],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    return done, root / "run"


def test_embedded_run_succeeds_and_names_its_output(cli_run):
    done, run_dir = cli_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"output: {run_dir}/export/data" in done.stdout


def test_embedded_run_prints_no_ray_notice_that_needs_no_action(cli_run):
    done, _ = cli_run
    output = done.stdout + done.stderr
    assert [n for n in NOISE if n in output] == []


def test_embedded_run_logs_one_summary_line_per_stage(cli_run):
    done, _ = cli_run
    summaries = [line for line in done.stderr.splitlines() if " in=" in line and " out=" in line]
    assert [line.split("pipeline.runner: ")[1].split(":")[0] for line in summaries] == ["ingest", "export"]
