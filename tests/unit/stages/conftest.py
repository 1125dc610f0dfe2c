"""Stage-test setup: the GME backend's contract classes, from the stub until the real module lands."""

from __future__ import annotations

from tests.support.gme_stub import install

install()
