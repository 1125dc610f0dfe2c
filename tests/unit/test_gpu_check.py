"""scripts/gpu_check.sh on the CPU (`--device cpu`: float32 against float32, the path CI can run): the
project's model classes import without Ray, GME and CLIP outputs match, and a threshold that cannot be
met makes it exit 1 with a FAIL line. The diffusion check is left to the GPU run (minutes on 2 CPUs)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = "scripts/gpu_check.sh"


def gpu_check(repo_root, tiny_cache, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tiny_cache)}
    return subprocess.run(["bash", SCRIPT, "--device", "cpu", "--work", str(tiny_cache), *args], cwd=repo_root,
                          env=env, capture_output=True, text=True, timeout=600, check=False)


def test_cpu_run_passes_and_prints_the_numbers(repo_root, tiny_cache):
    done = gpu_check(repo_root, tiny_cache, "--checks", "gme,clip")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == ("ok   imports: pipeline.models.gme, pipeline.models.clip, pipeline.models.diffusion, "
                        "pipeline.models.tiny without ray / vllm")
    checked = [line.split()[:3] for line in lines if line.startswith(("PASS", "FAIL"))]
    assert checked == [["PASS", "gme", "text"], ["PASS", "gme", "image"], ["PASS", "gme", "fused"],
                       ["PASS", "clip", "image"], ["PASS", "clip", "text"]]
    assert all("min cosine 1.000000" in line and "ms/batch" in line for line in lines if line.startswith("PASS"))
    assert lines[-1] == "gpu_check: 5 passed, 0 failed, 0 skipped (none)"


def test_a_failed_threshold_exits_1(repo_root, tiny_cache):
    done = gpu_check(repo_root, tiny_cache, "--checks", "gme", "--gme-min-cosine", "1.5")
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert [line.split()[:3] for line in done.stdout.splitlines() if line.startswith("FAIL")] == [
        ["FAIL", "gme", "text"], ["FAIL", "gme", "image"], ["FAIL", "gme", "fused"]
    ]
    assert done.stdout.splitlines()[-1] == "gpu_check: 0 passed, 3 failed, 0 skipped (none)"


def test_cuda_without_a_device_is_an_environment_error(repo_root, tiny_cache):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tiny_cache)}
    done = subprocess.run(["bash", SCRIPT, "--checks", "gme"], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 2 and "sees no CUDA device" in done.stdout
