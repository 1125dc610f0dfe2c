"""pipeline/raycluster.quiet_ray: Ray's noise leaves the terminal but stays in a log. No Ray cluster."""

from __future__ import annotations

import logging
import warnings

import pytest

from pipeline.raycluster import quiet_ray


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collect():
    handlers = {}

    def attach(name: str) -> Collect:
        handlers[name] = Collect()
        logging.getLogger(name).addHandler(handlers[name])
        return handlers[name]

    yield attach
    for name, handler in handlers.items():
        logging.getLogger(name).removeHandler(handler)


def test_ray_data_notices_are_hidden_from_its_console_but_reach_its_log_file(collect):
    from ray.data._internal.logging import HiddenRecordFilter

    quiet_ray()
    quiet_ray()  # idempotent: one filter per logger
    progress = logging.getLogger("ray.data._internal.progress")
    assert len(progress.filters) == 1
    seen = collect("ray.data._internal.progress")
    progress.warning("Progress bars disabled. To enable, set ...")
    progress.error("a real problem")
    console = HiddenRecordFilter()
    # Both records reach the handlers (ray-data.log keeps everything); the console shows the error only.
    assert [(r.getMessage(), console.filter(r)) for r in seen.records] == [
        ("Progress bars disabled. To enable, set ...", False), ("a real problem", True)]


def test_streaming_executor_info_is_hidden_and_its_warnings_shown(collect):
    from ray.data._internal.logging import HiddenRecordFilter

    quiet_ray()
    executor = logging.getLogger("ray.data._internal.execution.streaming_executor")
    seen = collect("ray.data._internal.execution.streaming_executor")
    executor.info("Dataset x execution finished in 1.0 seconds")
    executor.warning("backpressure")
    assert [HiddenRecordFilter().filter(r) for r in seen.records] == [False, True]


def test_the_token_auth_notice_goes_to_fusegens_debug_log(collect, caplog):
    quiet_ray()
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    seen = collect("ray._private.authentication.authentication_token_setup")
    pipeline_log = logging.getLogger("pipeline")
    caplog.set_level(logging.DEBUG, logger="pipeline")
    pipeline_log.addHandler(caplog.handler)
    try:
        auth.warning("Token authentication is enabled for this Ray cluster.")
        auth.error("no token found for a cluster that needs one")
    finally:
        pipeline_log.removeHandler(caplog.handler)
    assert [r.getMessage() for r in seen.records] == ["no token found for a cluster that needs one"]
    assert any(r.levelno == logging.DEBUG and "Token authentication is enabled" in r.getMessage()
               for r in caplog.records)


def test_concurrency_warnings_go_to_the_debug_log_and_others_still_show(monkeypatch, caplog):
    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *a, **k: shown.append(str(message)))
    quiet_ray()
    quiet_ray()  # wraps once
    pipeline_log = logging.getLogger("pipeline")
    caplog.set_level(logging.DEBUG, logger="pipeline")
    pipeline_log.addHandler(caplog.handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("The maximum number of concurrent tasks for 'Read' is set to 2, but ...", UserWarning)
            warnings.warn("something else", UserWarning)
    finally:
        pipeline_log.removeHandler(caplog.handler)
    assert shown == ["something else"]
    assert any("concurrent tasks for 'Read'" in r.getMessage() for r in caplog.records)
