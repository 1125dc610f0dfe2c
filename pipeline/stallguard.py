"""Stall guard: the driver stops a stage that finishes no shard for `resources.stall_timeout_s`.

The LLM watchdog (models/watchdog.py) bounds each inference call inside an actor, but only where
fusegen owns the call loop (transformers, openai). `ray.data.llm`'s vLLM stage has no per-request
timeout, and an actor can also hang outside inference (a deadlocked NCCL collective, a stuck
download). This guard sits where every backend ends: the driver's loop over finished blocks. When
no block arrives within the limit, the stage fails with `StageStalledError`, its manifest says so,
and a rerun resumes from the shards already committed. The abandoned Ray Data execution is not
cancelled (its iterator is blocked in another thread); `fusegen run` exits right after the error,
which ends it. A program that goes on in the same process must let that thread finish first.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from pipeline.errors import StageStalledError


def guarded(blocks: Iterable[Any], timeout_s: float, stage: str) -> Iterator[Any]:
    """Yield from `blocks`, raising `StageStalledError` if the next one takes over `timeout_s`.

    0 turns the guard off (plain iteration). Otherwise `blocks` is consumed by a daemon thread with
    a one-block hand-off, so the producer stays at most one block ahead of the consumer.
    """
    if not timeout_s:
        yield from blocks
        return
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def offer(item: tuple[str, Any]) -> bool:
        """Hand `item` over unless the consumer has gone (then a full queue must not block forever)."""
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for block in blocks:
                if not offer(("block", block)):
                    return
            offer(("done", None))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer thread below
            offer(("error", exc))

    # Daemon: a producer stuck inside a hung Ray call must not keep the driver alive at exit.
    thread = threading.Thread(target=produce, name=f"fusegen-{stage}-blocks", daemon=True)
    thread.start()
    received = 0
    try:
        while True:
            try:
                kind, value = handoff.get(timeout=timeout_s)
            except queue.Empty:
                raise StageStalledError(_message(stage, timeout_s, received)) from None
            if kind == "done":
                return
            if kind == "error":
                raise value
            received += 1
            yield value
    finally:
        stop.set()


def _message(stage: str, timeout_s: float, received: int) -> str:
    which = "its first block" if received == 0 else f"a block after the {received} it finished"
    return (
        f"{stage}: no progress for `{stage}.resources.stall_timeout_s` = {timeout_s:g} s (waiting for "
        f"{which}), so the stage looks hung and stops here instead of waiting forever. Shards already "
        f"committed are kept; rerun the same command to resume. Check the actors' logs (ray logs, the "
        f"dashboard) for a hung engine or GPU; if shards are just slow (model loading, large shards, "
        f"long outputs), raise `stall_timeout_s` or lower `resources.shard_rows`; 0 turns the guard off."
    )
