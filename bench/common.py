"""Shared bench helpers: synthetic corpora, running `fusegen` as a user does, memory sampling."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
FUSEGEN = str(Path(sys.executable).parent / "fusegen")

_WORDS = ["river", "bridge", "engine", "protein", "market", "orbit", "harvest", "signal", "archive", "canyon", "lattice", "museum", "glacier", "circuit", "festival", "voltage", "estuary", "mineral", "theorem", "compass", "ledger", "pigment", "reactor", "savanna", "turbine", "vessel", "quartz", "dialect", "monsoon", "plateau", "enzyme", "harbour", "comet", "lantern", "meadow", "cipher", "alloy", "prism"]


def write_corpus(path: Path, rows: int, seed: int = 0, words: tuple[int, int] = (40, 90), spread: bool = False
                 ) -> Path:
    """Deterministic JSONL passages of `words` words, ~1 in 50 an exact duplicate (as real crawls have): of
    the passage before it, or with `spread`, of one of the last 100,000 passages (a page seen again later in
    a crawl)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    recent: list[str] = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            if recent and rng.random() < 0.02:
                text = rng.choice(recent) if spread else recent[-1]
            else:
                text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(*words))).capitalize() + "."
            recent.append(text)
            if len(recent) > 100_000:
                del recent[:50_000]
            f.write(json.dumps({"doc_id": f"d{i}", "title": f"Passage {i}", "text": text}) + "\n")
    return path


class TreeMemory:
    """Samples a process and all its descendants (embedded Ray's raylet, GCS and workers) every `every` s.

    `peak_rss` is the driver alone; `peak_pss` sums PSS over the tree, which counts shared pages (the
    object store is shared memory mapped by every worker) once instead of once per process.
    """

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.proc, self.every = psutil.Process(pid), every
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak_pss = max(self.peak_pss, total)
            self._stop.wait(self.every)


def fusegen(*args: str, env: dict | None = None, memory: bool = False) -> tuple[float, TreeMemory | None, str]:
    """Run `fusegen ARGS` in a fresh process; (wall seconds, memory sampler or None, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen([FUSEGEN, *args], cwd=REPO, env=env or bench_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sampler = TreeMemory(proc.pid) if memory else None
    if sampler:
        sampler.__enter__()
    out, _ = proc.communicate()
    if sampler:
        sampler.__exit__(None, None, None)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"fusegen {' '.join(args)} failed ({proc.returncode}):\n{out[-4000:]}")
    return seconds, sampler, out


def bench_env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return env


def manifest(run_dir: Path, folder: str) -> dict:
    return json.loads((run_dir / folder / "_manifest.json").read_text())


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}"


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def reset_peak_rss() -> int:
    """Reset this process's peak RSS (Linux: "5" to /proc/self/clear_refs) and return the RSS now.
    `ru_maxrss` cannot be reset and a spawned child inherits its parent's, so peaks come from VmHWM."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak RSS since the last `reset_peak_rss` (VmHWM)."""
    return _status_kib("VmHWM") * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")
