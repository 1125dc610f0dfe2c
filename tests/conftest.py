"""Shared fixtures: offline env, the repo root, the tiny-model cache (built once per session) and a local Hub
server (card and push tests, unit and e2e)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.hub_server import TEST_TOKEN, HubServer

REPO = Path(__file__).resolve().parent.parent

# Model hubs are unreachable; make any accidental hub call fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A cache_dir holding the tiny models, shared by every test of the session."""
    from pipeline.models.tiny import build_all

    root = tmp_path_factory.mktemp("fusegen-cache")
    # The vLLM venv lacks open_clip and diffusers: its tests need neither tiny CLIP nor diffusion.
    build_all(root / "tiny", skip_unavailable=True)
    return root


def _selected(config, marker: str) -> bool:
    """True when `-m` asks for `marker` itself (not `not marker`): the long variants run then."""
    expr = config.option.markexpr or ""
    return marker in expr and f"not {marker}" not in expr


def long_variant(marker: str, what: str):
    """Mark a test as the long variant of `marker` (faults, badinput): it carries that marker, so
    `pytest -m <marker>` selects it, and the default suite SKIPS it, saying the command, before any of its
    fixtures run (pytest_collection_modifyitems). Each such test has a short variant in the default suite."""

    marks = (getattr(pytest.mark, marker), pytest.mark.long_variant(marker, what))

    def mark(test):
        for one in marks:
            test = one(test)
        return test

    mark.marks = marks  # for one case of a parametrized test: pytest.param(..., marks=long_variant(...).marks)
    return mark


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        long = item.get_closest_marker("long_variant")
        if long is not None and not _selected(config, long.args[0]):
            marker, what = long.args
            item.add_marker(pytest.mark.skip(reason=f"{what} is a long variant: run it with `pytest -m {marker}`"))


def fault_seeds(config) -> list[int]:
    """Seeds of tests/e2e/test_fault_resume.py: FUSEGEN_FAULT_SEEDS as a count (`10`: seeds 0-9) or a list
    (`3,8`; one seed: `5,`); unset, 10 under `-m faults`, and otherwise four seeds, one of each failure
    the other suites do not already cover (seed k draws kind k % 7, tests/support/fault_runs.KINDS): a
    worker killed mid-shard (1), a failed write (3), the driver killed right after a commit (5) and
    `ray job stop` (6). A raised exception (0) and a failed read (4) take the path a failed write takes
    (an exception out of the worker's task: Ray runs it again or the run fails and resumes); they run
    under `-m faults`."""
    raw = os.environ.get("FUSEGEN_FAULT_SEEDS", "").strip()
    if "," in raw:
        return [int(s) for s in raw.split(",") if s.strip()]
    if raw:
        return list(range(int(raw)))
    return list(range(10)) if _selected(config, "faults") else [1, 3, 5, 6]


def pytest_generate_tests(metafunc) -> None:
    if "fault_seed" in metafunc.fixturenames:
        seeds = fault_seeds(metafunc.config)
        metafunc.parametrize("fault_seed", seeds, ids=[f"seed{s}" for s in seeds])


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The test Hub on 127.0.0.1 with HF_TOKEN set; huggingface_hub pointed at it and allowed online."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    with HubServer(TEST_TOKEN) as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server
