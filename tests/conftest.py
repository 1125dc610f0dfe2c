"""Shared fixtures: offline env, the repo root, and the tiny-model cache (built once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
