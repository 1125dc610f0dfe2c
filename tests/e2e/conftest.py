"""A real local Ray cluster for the session (`ray start --head` on free ports), driven as users do.

The cluster starts with RAY_AUTH_MODE=disabled: Ray 2.60 turns token auth on by default and
`ray job submit` would otherwise fail with "Missing authentication token" (see README).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


class Cluster:
    def __init__(self, address: str, env: dict) -> None:
        self.address, self.env = address, env

    def ray(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [str(BIN / "ray"), *args]
        return subprocess.run(cmd, env=self.env, cwd=REPO, capture_output=True, text=True, check=check, timeout=timeout)

    def submit(self, job_id: str, fusegen_args: list[str]) -> None:
        """`ray job submit --no-wait --working-dir . -- fusegen run ...`, exactly the README's form."""
        self.ray(
            "job", "submit", "--address", self.address, "--submission-id", job_id, "--no-wait",
            "--working-dir", ".", "--", "fusegen", "run", *fusegen_args,
        )

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address)

    def status(self, job_id: str) -> str:
        return str(self.client().get_job_status(job_id).value)

    def logs(self, job_id: str) -> str:
        return self.client().get_job_logs(job_id)

    def wait(self, job_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.status(job_id)
            if state in ("SUCCEEDED", "FAILED", "STOPPED"):
                return state
            time.sleep(1)
        raise TimeoutError(f"job {job_id} did not finish in {timeout}s:\n{self.logs(job_id)[-3000:]}")

    def stop(self, job_id: str) -> None:
        self.ray("job", "stop", "--address", self.address, job_id, check=False)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    env = cluster_env()
    port, dash = free_port(), free_port()
    temp_dir = Path("/tmp") / f"fg-ray-{os.getpid()}"
    args = [
        str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
        "--num-cpus", "2", "--object-store-memory", str(600 * 1024 * 1024), "--disable-usage-stats",
        "--temp-dir", str(temp_dir),
    ]
    subprocess.run(args, env=env, cwd=REPO, check=True, capture_output=True, text=True, timeout=180)
    cluster = Cluster(f"http://127.0.0.1:{dash}", env)
    try:
        yield cluster
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, check=False, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def embedded_ray():
    """An in-process Ray for a module's runs (`address="local"`: never the session's cluster)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024 * 1024,
             configure_logging=True, logging_level="WARNING")
    yield
    ray.shutdown()
