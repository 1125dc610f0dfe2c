"""Fail fast when a stage asks for resources no node of the Ray cluster has.

Ray queues an actor whose resource request no node can meet and waits forever (the autoscaler logs
"No available node types can fulfill resource request" and nothing else happens): a vLLM stage that
asks for a GPU on a CPU-only cluster would hang the run. Before a stage's actors are requested, the
driver checks each bundle they ask for against the nodes' total resources (not what is free now:
other stages' actors give theirs back). When it does not fit, it waits up to a grace period for an
autoscaler to add nodes, then raises `StageUnschedulableError` naming the stage, the request and the
nodes. Pure functions over `ray.nodes()`-shaped dicts, so they are unit-tested without Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pipeline.errors import StageUnschedulableError
from pipeline.logging import get_logger

log = get_logger(__name__)

# Resource keys Ray adds on its own and a stage never asks for; left out of messages.
_HIDDEN = ("node:", "memory", "object_store_memory")


def fits(bundle: dict[str, float], node: dict[str, float]) -> bool:
    """True when one node's total resources cover one bundle."""
    return all(node.get(key, 0.0) >= amount for key, amount in bundle.items() if amount > 0)


def unschedulable_reason(bundles: list[dict[str, float]], nodes: list[dict]) -> str:
    """Why `bundles` (one actor's request, e.g. a placement group) cannot run on `nodes`; "" if it can.

    `nodes` as `ray.nodes()` returns them (dead nodes are ignored). Each bundle must fit on one node
    and, together, the bundles must fit in the cluster's totals.
    """
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    if not alive:
        return "the cluster has no live node"
    for bundle in bundles:
        if not any(fits(bundle, node) for node in alive):
            return f"no node has {_show(bundle)}"
    need: dict[str, float] = {}
    for bundle in bundles:
        for key, amount in bundle.items():
            need[key] = need.get(key, 0.0) + amount
    total: dict[str, float] = {}
    for node in alive:
        for key, amount in node.items():
            total[key] = total.get(key, 0.0) + amount
    if not fits(need, total):
        return f"the {len(bundles)} bundles need {_show(need)} together, more than the whole cluster has"
    return ""


def wait_until_schedulable(
    stage: str,
    bundles: list[dict[str, float]],
    grace_s: float,
    knob: str,
    hint: str = "",
    nodes: Callable[[], list[dict]] | None = None,
    poll_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once some nodes can hold `bundles`; raise after `grace_s` seconds if none can.

    Args:
        stage: the stage name, for the message.
        bundles: the resources one of the stage's actors asks for, one dict per bundle.
        grace_s: how long an autoscaler gets to add a node that fits (0: check once).
        knob: the dotted config key that sets `grace_s`, for the message.
        hint: what to change in the config, appended to the message.
        nodes: returns the cluster's nodes (default `ray.nodes`).

    Raises:
        StageUnschedulableError: no node could hold the request within `grace_s`.
    """
    if nodes is None:
        import ray

        nodes = ray.nodes
    deadline = clock() + grace_s
    while True:
        current = nodes()
        why = unschedulable_reason(bundles, current)
        if not why:
            return
        if clock() >= deadline:
            raise StageUnschedulableError(_message(stage, bundles, current, why, grace_s, knob, hint))
        log.warning("%s: %s; waiting up to %.0f s for a node that fits (`%s`)", stage, why, grace_s, knob)
        sleep(min(poll_s, max(deadline - clock(), 0.0)))


def _message(
    stage: str, bundles: list[dict], nodes: list[dict], why: str, grace_s: float, knob: str, hint: str
) -> str:
    shown = "; ".join(
        f"{n.get('NodeManagerAddress', '?')} {_show(n.get('Resources', {}))}"
        for n in nodes
        if n.get("Alive", True)
    )
    request = " + ".join(_show(b) for b in bundles)
    return (
        f"{stage}: its actors ask for {request} but {why} (nodes: {shown or 'none'}); waited {grace_s:g} s "
        f"(`{knob}`). Ray would queue these actors forever. Run on nodes that have these resources or "
        f"lower the request (`{stage}.resources.num_cpus` / `num_gpus`){'; ' + hint if hint else ''}."
    )


def _show(resources: dict[str, float]) -> str:
    kept = {k: v for k, v in sorted(resources.items()) if not k.startswith(_HIDDEN)}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in kept.items()) + "}"
