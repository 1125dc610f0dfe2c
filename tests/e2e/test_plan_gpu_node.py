"""`fusegen plan`, `run --dry-run` and the run's own check against a real Ray node that declares 8 GPUs
(logical: this machine has none) and 64 CPUs: the shipped GPU configs plan on it; a tensor-parallel
group of 16 GPUs is refused before any work, by the plan and by the run, naming the stage.

The node is this module's own (`ray start --head` with its own port and temp dir, no dashboard), not
the session's 3-CPU cluster; only its processes are ended (tests/e2e/conftest.py's helpers)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.e2e.conftest import BIN, REPO, cluster_env, end_processes, free_port, own_processes

pytestmark = pytest.mark.e2e

TP16 = "doc2query.llm.tensor_parallel_size=16"
REFUSED = ("stage doc2query: vLLM engine replica needs a bundle of 16 GPUs + 16 CPUs on one node "
           "(tensor_parallel_size=16); the largest node has 8 GPUs.")


@pytest.fixture(scope="module")
def gpu_node():
    """RAY_ADDRESS of a one-node cluster declaring 8 GPUs and 64 CPUs."""
    env = cluster_env()
    port = free_port()
    temp_dir = f"/tmp/fg-ray-gpu-{os.getpid()}"
    head = [
        str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
        "--include-dashboard", "false", "--num-cpus", "64", "--num-gpus", "8",
        "--object-store-memory", str(200 * 1024 * 1024), "--disable-usage-stats", "--temp-dir", temp_dir,
    ]
    try:
        subprocess.run(head, env=env, cwd=REPO, check=True, capture_output=True, text=True, timeout=180)
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:
        end_processes(own_processes([temp_dir]))
        shutil.rmtree(temp_dir, ignore_errors=True)


def fusegen(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "fusegen"), *args], env={**env, "PYTHONPATH": str(REPO)}, cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("config", ["configs/gpu.yaml", "configs/megapairs-gpu.yaml"])
def test_shipped_gpu_configs_plan_on_one_8_gpu_node(gpu_node, config):
    done = fusegen(gpu_node, "plan", config)
    assert done.returncode == 0, done.stderr[-3000:]
    cluster = done.stdout.splitlines()[1]
    assert cluster.startswith("cluster: 1 node(s): ") and cluster.endswith(" {CPU: 64, GPU: 8}"), cluster
    assert done.stdout.rstrip().endswith("plan: every stage can start on these nodes")


def test_dry_run_prints_the_tp_groups(gpu_node):
    done = fusegen(gpu_node, "run", "configs/gpu.yaml", "--dry-run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("doc2query\n  vLLM engine replica: 4 x {CPU: 1, GPU: 1} on one node (tensor_parallel_size=4), "
            "1..2 at once\n") in done.stdout


def test_plan_and_dry_run_refuse_a_tp_group_larger_than_the_node(gpu_node):
    for args in (("plan", "configs/gpu.yaml"), ("run", "configs/gpu.yaml", "--dry-run")):
        done = fusegen(gpu_node, *args, "--set", TP16)
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
        assert REFUSED in done.stderr


def test_run_refuses_before_any_stage_prepares(gpu_node, tmp_path):
    """gpu.yaml's corpus (data/passages) and models are not here: the refusal comes before any of it."""
    run_dir = tmp_path / "run"
    done = fusegen(gpu_node, "run", "configs/gpu.yaml", "--run-dir", str(run_dir), "--set", TP16,
                   "--set", "ray.schedule_grace_s=0")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "fusegen: error: this config cannot be scheduled on the cluster; nothing was run:" in done.stderr
    assert REFUSED in done.stderr and "no wait (`ray.schedule_grace_s`)" in done.stderr
    assert not [p.name for p in run_dir.iterdir() if p.name[:2].isdigit() or p.name == "export"]
