"""pipeline/models/watchdog.py: timeouts, the single retry, error:timeout rows and InferenceHungError.

The inference calls are fake functions that return at once or block on an event (released at teardown,
so no abandoned thread outlives its test). Timeouts are 0.1 s, so the whole module runs in about 2 s.
"""

from __future__ import annotations

import threading

import pytest

from pipeline.errors import InferenceHungError
from pipeline.models.watchdog import TIMED_OUT, TIMEOUT_ERROR, Watchdog

TIMEOUT_S = 0.1


class FakeCall:
    """Hangs (until `release`) on the attempts listed in `hang_on` (1-based), else returns `value`."""

    def __init__(self, release: threading.Event, hang_on: set[int] | None = None, value: object = "done"):
        self.release, self.hang_on, self.value = release, hang_on or set(), value
        self.attempts = 0
        self.cancel_events: list[threading.Event] = []

    def __call__(self, cancel: threading.Event) -> object:
        self.attempts += 1
        self.cancel_events.append(cancel)
        if self.attempts in self.hang_on:
            self.release.wait()
        return self.value

    @classmethod
    def always_hanging(cls, release: threading.Event) -> FakeCall:
        return cls(release, hang_on=set(range(1, 100)))


def make(max_consecutive: int = 3) -> Watchdog:
    return Watchdog(TIMEOUT_S, max_consecutive, "fake-model")


def test_fast_call_passes_its_value_through_in_one_attempt(release):
    call = FakeCall(release)
    assert (make().run(call), call.attempts) == ("done", 1)


def test_call_that_hangs_once_succeeds_on_the_retry(release):
    call = FakeCall(release, hang_on={1})
    assert (make().run(call), call.attempts) == ("done", 2)


def test_abandoned_attempt_has_its_cancel_event_set(release):
    call = FakeCall(release, hang_on={1})
    make().run(call)
    assert [e.is_set() for e in call.cancel_events] == [True, False]


def test_always_hanging_call_times_out_after_two_attempts(release):
    call = FakeCall.always_hanging(release)
    assert (make().run(call) is TIMED_OUT, call.attempts) == (True, 2)


def test_always_hanging_batch_gives_error_timeout_rows(release):
    rows = make().run_rows(FakeCall.always_hanging(release), 3)
    assert rows == [("", TIMEOUT_ERROR)] * 3


def test_run_rows_returns_the_call_rows_when_it_finishes(release):
    rows = [("{}", ""), ("", "error:truncated_output")]
    assert make().run_rows(FakeCall(release, value=rows), 2) == rows


def test_consecutive_timeouts_reaching_the_limit_raise_inference_hung_error(release):
    watchdog = make(max_consecutive=2)
    watchdog.run(FakeCall.always_hanging(release))
    with pytest.raises(InferenceHungError, match=r"fake-model: 2 inference calls in a row.*llm.timeout_s"):
        watchdog.run(FakeCall.always_hanging(release))


def test_hung_error_says_what_to_do(release):
    with pytest.raises(InferenceHungError, match=r"Check the engine.*raise `llm.timeout_s`"):
        make(max_consecutive=1).run(FakeCall.always_hanging(release))


def test_a_success_resets_the_consecutive_timeout_count(release):
    watchdog = make(max_consecutive=2)
    watchdog.run(FakeCall.always_hanging(release))
    watchdog.run(FakeCall(release))
    assert (watchdog.run(FakeCall.always_hanging(release)) is TIMED_OUT, watchdog.consecutive_timeouts) == (
        True,
        1,
    )


def test_an_exception_in_the_call_propagates(release):
    def boom(cancel: threading.Event) -> None:
        raise RuntimeError("CUDA error: device-side assert")

    with pytest.raises(RuntimeError, match="device-side assert"):
        make().run(boom)
