"""Watchdog for hung inference: bound every engine call by `llm.timeout_s` instead of waiting forever.

An LLM callable (`HFGenerateFn`, `OpenAIChatFn`) hands each inference call (one `generate` of a
batch, one HTTP request with its retries) to `Watchdog.run`, which runs it in a daemon thread. A call
that has not returned within `timeout_s` is abandoned (its cancel event is set so a cooperative call
stops early; a truly stuck one is left to die with the process) and tried once more. If the retry
also times out, the caller marks that call's rows `error:timeout` and goes on. Timed-out calls in a
row are counted per actor, and any success resets the count; at `max_consecutive_timeouts` the
watchdog raises `InferenceHungError` so the stage stops instead of hanging or emitting only errors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pipeline.errors import InferenceHungError
from pipeline.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")
TIMEOUT_ERROR = "error:timeout"
# Returned by `Watchdog.run` when both attempts timed out (a value no inference call returns).
TIMED_OUT: Any = object()


class Watchdog:
    """Per-actor timeout guard; thread-safe, so concurrent requests may share one.

    Args:
        timeout_s: seconds one attempt of a call may take.
        max_consecutive_timeouts: timed-out calls in a row (each already retried once) that raise.
        model: the model the calls go to, named in the warning and the error.
    """

    def __init__(self, timeout_s: float, max_consecutive_timeouts: int, model: str) -> None:
        self.timeout_s = timeout_s
        self.max_consecutive_timeouts = max_consecutive_timeouts
        self.model = model
        self.consecutive_timeouts = 0
        self._lock = threading.Lock()

    def run(self, fn: Callable[[threading.Event], T]) -> T:
        """`fn(cancel)` under the timeout, retried once; TIMED_OUT if both attempts time out.

        `fn` may watch `cancel` (set when its attempt is abandoned) to stop early. An exception
        raised by `fn` propagates (engine failures are not timeouts).

        Raises:
            InferenceHungError: this call made `max_consecutive_timeouts` timed-out calls in a row.
        """
        for attempt in (1, 2):
            finished, value = self._attempt(fn)
            if finished:
                with self._lock:
                    self.consecutive_timeouts = 0
                return value
            log.warning(
                "%s: inference call did not return within llm.timeout_s=%s s (attempt %d of 2)%s",
                self.model,
                self.timeout_s,
                attempt,
                "; retrying it" if attempt == 1 else "; marking its rows error:timeout",
            )
        with self._lock:
            self.consecutive_timeouts += 1
            count = self.consecutive_timeouts
        if count >= self.max_consecutive_timeouts:
            raise InferenceHungError(self._hung_message(count))
        return TIMED_OUT

    def run_rows(
        self, fn: Callable[[threading.Event], list[tuple[str, str]]], n_rows: int
    ) -> list[tuple[str, str]]:
        """`run` for a call returning one (raw, error) pair per row; a timeout gives `error:timeout` rows."""
        value = self.run(fn)
        return [("", TIMEOUT_ERROR)] * n_rows if value is TIMED_OUT else value

    def _attempt(self, fn: Callable[[threading.Event], T]) -> tuple[bool, T | None]:
        cancel = threading.Event()
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn(cancel)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread below
                box["error"] = exc

        # Daemon: an abandoned call that never returns must not keep the process alive at exit.
        thread = threading.Thread(target=target, name="fusegen-inference", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            cancel.set()
            return False, None
        if "error" in box:
            raise box["error"]
        return True, box["value"]

    def _hung_message(self, count: int) -> str:
        return (
            f"{self.model}: {count} inference calls in a row did not return within "
            f"`llm.timeout_s` = {self.timeout_s} s (each was tried twice), so the engine looks hung "
            f"and the stage stops here instead of waiting forever. Check the engine (GPU memory and "
            f"utilisation, the server's logs and health for the openai backend); if calls are just "
            f"slow (large batches, long outputs, a busy server), raise `llm.timeout_s`, lower "
            f"`resources.batch_size` or `llm.max_new_tokens`, or raise `llm.max_consecutive_timeouts`."
        )
