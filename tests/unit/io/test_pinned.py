"""pipeline/io/pinned.py: the backend dials only the pinned, vetted addresses and enforces the deadline."""

from __future__ import annotations

import threading
import time

import httpcore
import httpx
import pytest

from pipeline.io.net_guard import Target
from pipeline.io.pinned import PinnedBackend


class Recorder(httpcore.NetworkStream):
    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.timeouts.append(timeout)
        return b""


def target(*addresses: str, port: int = 80) -> Target:
    return Target(httpx.URL(f"http://img.test:{port}/"), "img.test", port, addresses)


def test_without_a_pin_nothing_is_dialled():
    dialled = []
    backend = PinnedBackend(lambda a, p, t: dialled.append(a))
    with pytest.raises(httpcore.ConnectError, match="not vetted"):
        backend.connect_tcp("img.test", 80)
    assert dialled == []


def test_the_pinned_addresses_are_dialled_in_order_whatever_host_httpcore_names():
    dialled = []

    def connector(address: str, port: int, timeout: float | None) -> httpcore.NetworkStream:
        dialled.append(address)
        if address == "93.184.216.34":
            raise httpcore.ConnectError("down")
        return Recorder()

    backend = PinnedBackend(connector)
    backend.pin(target("93.184.216.34", "8.8.8.8"), time.monotonic() + 5)
    backend.connect_tcp("evil.test", 80)
    assert dialled == ["93.184.216.34", "8.8.8.8"]


def test_a_port_other_than_the_vetted_one_is_refused():
    backend = PinnedBackend(lambda a, p, t: Recorder())
    backend.pin(target("8.8.8.8", port=80), time.monotonic() + 5)
    with pytest.raises(httpcore.ConnectError):
        backend.connect_tcp("img.test", 8080)


def test_a_pin_belongs_to_its_thread():
    backend = PinnedBackend(lambda a, p, t: Recorder())
    backend.pin(target("8.8.8.8"), time.monotonic() + 5)
    errors = []

    def other() -> None:
        try:
            backend.connect_tcp("img.test", 80)
        except httpcore.ConnectError as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(errors) == 1


def test_read_timeouts_are_cut_to_the_deadline_and_fail_after_it():
    inner = Recorder()
    backend = PinnedBackend(lambda a, p, t: inner)
    backend.pin(target("8.8.8.8"), time.monotonic() + 0.3)
    stream = backend.connect_tcp("img.test", 80, timeout=10)
    stream.read(10, timeout=10)
    assert inner.timeouts[0] <= 0.3
    time.sleep(0.35)
    with pytest.raises(httpcore.ReadTimeout):
        stream.read(10, timeout=10)
