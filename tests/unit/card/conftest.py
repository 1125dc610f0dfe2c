"""Card and push fixtures: a hand-written run dir, and a local Hub server the real client talks to."""

from __future__ import annotations

import pytest

from tests.support.hub_server import HubServer
from tests.support.run_dir import make_run_dir

TOKEN = "hf_fusegenTESTtoken_7f3a9c1e55"


@pytest.fixture
def run_dir(tmp_path):
    return make_run_dir(tmp_path)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The test Hub on 127.0.0.1 with HF_TOKEN set; huggingface_hub pointed at it and allowed online."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    with HubServer(TOKEN) as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server
