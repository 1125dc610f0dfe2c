"""One real local Ray cluster for the whole e2e session, driven as users do.

Two nodes on this machine: the head (`ray start --head`, 2 CPUs) and a second node joined with
`ray start --address` (1 CPU and the custom resource `model_node`), so a stage whose actors ask for
`model_node` runs them on the second node while the driver and glue tasks stay on the head. Jobs
go in with `ray job submit`; in-process runs (`embedded_ray`) connect to the same cluster as a
driver, so the session starts Ray once, not once per module.

The cluster starts with RAY_AUTH_MODE=disabled: Ray 2.60 turns token auth on by default and
`ray job submit` would otherwise fail with "Missing authentication token" (see README). At the end
only this session's Ray processes are ended, found by their own temp dirs and their child processes
(never `ray stop`, which would end every Ray cluster on the machine, a user's own included).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODEL_NODE = "model_node"


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


def own_processes(temp_dirs: list[str]) -> list[psutil.Process]:
    """Ray's daemons name their temp dir on the command line; workers and job drivers are their children."""
    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if any(d in cmdline for d in temp_dirs) and proc.pid != os.getpid():
            roots.append(proc)
    found = {p.pid: p for p in roots}
    for root in roots:
        try:
            found.update({c.pid: c for c in root.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def end_processes(procs: list[psutil.Process], grace_s: float = 10) -> None:
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


class Cluster:
    def __init__(self, address: str, gcs: str, env: dict) -> None:
        self.address, self.gcs, self.env = address, gcs, env

    def ray(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [str(BIN / "ray"), *args]
        done = subprocess.run(cmd, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode:
            raise AssertionError(f"`ray {' '.join(args[:2])}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done

    def submit(self, job_id: str, fusegen_args: list[str]) -> None:
        """`ray job submit --no-wait --working-dir . -- fusegen run ...`, exactly the README's form."""
        self.ray(
            "job", "submit", "--address", self.address, "--submission-id", job_id, "--no-wait",
            "--working-dir", ".", "--", "fusegen", "run", *fusegen_args,
        )

    def wait_ready(self, timeout: float = 180) -> None:
        """`ray start` returns before the dashboard's job server answers (slowly on a loaded machine)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client().list_jobs()
                return
            except Exception:  # any failure here means "not up yet"
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

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
def ray_cluster():
    env = cluster_env()
    port, dash = free_port(), free_port()
    temp_dirs = [f"/tmp/fg-ray-{os.getpid()}", f"/tmp/fg-ray-{os.getpid()}-n2"]
    head = [
        str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
        "--num-cpus", "2", "--object-store-memory", str(600 * 1024 * 1024), "--disable-usage-stats",
        "--temp-dir", temp_dirs[0],
    ]
    second = [
        str(BIN / "ray"), "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
        "--num-cpus", "1", "--resources", f'{{"{MODEL_NODE}": 2}}', "--object-store-memory",
        str(300 * 1024 * 1024), "--disable-usage-stats", "--temp-dir", temp_dirs[1],
        "--min-worker-port", "20000", "--max-worker-port", "20999",
    ]
    try:
        subprocess.run(head, env=env, cwd=REPO, check=True, capture_output=True, text=True, timeout=180)
        subprocess.run(second, env=env, cwd=REPO, check=True, capture_output=True, text=True, timeout=180)
        cluster = Cluster(f"http://127.0.0.1:{dash}", f"127.0.0.1:{port}", env)
        cluster.wait_ready()
        yield cluster
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        end_processes(own_processes(temp_dirs))
        for d in temp_dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def embedded_ray(ray_cluster):
    """This process as a driver of the session's cluster (runs in-process, like `fusegen run` does)."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    if not ray.is_initialized():
        ray.init(address=ray_cluster.gcs, configure_logging=True, logging_level="WARNING")
    yield ray_cluster


@pytest.fixture(scope="session")
def gme_real_run(ray_cluster, tmp_path_factory, tiny_cache):
    """The whole GME track as the real runner writes it (this process as the driver, like `embedded_ray`;
    tests/support/gme_real_run.py), once per session: (run dir, the served LLM). The openai backend tests
    check it, and the card and publish tests read it, so they see the manifests, markers and export the
    writer produces rather than hand-written ones. A test that changes the run dir works on a copy."""
    import ray

    from tests.support.gme_real_run import SECRET, FlakyServer, run, write_eval_file
    from tests.support.openai_server import OpenAIServer

    os.environ["RAY_AUTH_MODE"] = "disabled"
    if not ray.is_initialized():
        ray.init(address=ray_cluster.gcs, configure_logging=True, logging_level="WARNING")
    mp = pytest.MonkeyPatch()
    mp.setenv("FUSEGEN_TEST_KEY", SECRET)
    root = tmp_path_factory.mktemp("gme-real")
    run_dir = root / "run"
    eval_file = write_eval_file(root / "eval.jsonl", REPO)
    try:
        with OpenAIServer(default=FlakyServer()) as server:
            run(run_dir, server, tiny_cache, eval_file)
    finally:
        mp.undo()
    return run_dir, server
