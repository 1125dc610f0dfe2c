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


def fault_seeds(config) -> list[int]:
    """Seeds of tests/e2e/test_fault_resume.py: FUSEGEN_FAULT_SEEDS as a count (`10`: seeds 0-9) or a list
    (`3,8`; one seed: `5,`); unset, 10 under `-m faults`, and otherwise one seed of each fault kind the
    short track can take (seed k draws kind k % 7; seed 2's actor kill is a worker kill there, as seed 1's)."""
    raw = os.environ.get("FUSEGEN_FAULT_SEEDS", "").strip()
    if "," in raw:
        return [int(s) for s in raw.split(",") if s.strip()]
    if raw:
        return list(range(int(raw)))
    return list(range(10)) if _selected(config, "faults") else [0, 1, 3, 4, 5, 6]


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
