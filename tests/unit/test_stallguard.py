"""pipeline/stallguard.py: the driver-side guard that stops a stage whose blocks stop coming.

Fake block sources hang on an event released at teardown, so no producer thread outlives its test.
"""

from __future__ import annotations

import threading

import pytest

from pipeline.errors import StageStalledError
from pipeline.stage import Resources
from pipeline.stallguard import guarded

TIMEOUT_S = 0.2


def blocks_then_hang(release: threading.Event, n: int):
    yield from range(n)
    release.wait()
    yield "late"


def test_blocks_pass_through_in_order_when_they_keep_coming():
    assert list(guarded(iter(range(5)), TIMEOUT_S, "doc2query")) == [0, 1, 2, 3, 4]


def test_zero_timeout_turns_the_guard_off_and_waits(release):
    timer = threading.Timer(2 * TIMEOUT_S, release.set)
    timer.start()
    assert list(guarded(blocks_then_hang(release, 2), 0, "doc2query")) == [0, 1, "late"]


def test_no_block_within_the_timeout_raises_after_the_blocks_that_came(release):
    got = []
    with pytest.raises(StageStalledError, match=r"doc2query: no progress .* after the 2 it finished"):
        got.extend(guarded(blocks_then_hang(release, 2), TIMEOUT_S, "doc2query"))
    assert got == [0, 1]


def test_a_stage_that_never_yields_names_its_first_block(release):
    with pytest.raises(StageStalledError, match="waiting for its first block.*stall_timeout_s"):
        list(guarded(blocks_then_hang(release, 0), TIMEOUT_S, "entities"))


def test_an_error_in_the_block_source_reaches_the_consumer():
    def failing():
        yield 1
        raise ValueError("actor died")

    with pytest.raises(ValueError, match="actor died"):
        list(guarded(failing(), TIMEOUT_S, "doc2query"))


def test_resources_refuse_a_negative_stall_timeout():
    with pytest.raises(Exception, match="stall_timeout_s"):
        Resources(stall_timeout_s=-1)


def test_stall_timeout_is_operational_so_changing_it_keeps_the_fingerprint():
    from pipeline.stage import StageConfig

    assert StageConfig(Resources(stall_timeout_s=60)).semantic_dict() == StageConfig().semantic_dict()
