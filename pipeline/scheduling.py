"""Fail fast when a stage asks for resources no node of the Ray cluster has.

Ray queues an actor whose resource request no node can meet and waits forever (the autoscaler logs
"No available node types can fulfill resource request" and nothing else happens): a vLLM stage that
asks for a GPU on a CPU-only cluster would hang the run. Before a stage's actors are requested, the
driver checks each bundle they ask for against the nodes' total resources (not what is free now:
other stages' actors give theirs back). When it does not fit, it waits up to a grace period for an
autoscaler to add nodes, then raises `StageUnschedulableError` naming the stage, the request and the
nodes. Pure functions over `ray.nodes()`-shaped dicts, so they are unit-tested without Ray.

The plan (`fusegen plan`, `fusegen run --dry-run`, and the runner before any stage prepares): every
stage declares the pools it starts (`Stage.schedule`: its phases, each a set of `ActorPool`s running
at once). Before any work, each pool's node groups (one actor's bundle; a vLLM replica's tensor-
parallel group of GPU bundles) must fit one node, and every phase's minimum pools must pack onto the
nodes together; otherwise `StageUnschedulableError` lists each stage that cannot start and what it
lacks ("stage doc2query: vLLM engine replica needs a bundle of 4 GPUs + 4 CPUs on one node
(tensor_parallel_size=4); the largest node has 2 GPUs").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

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



# --- the plan: every stage's actor pools against the cluster, before any work -----------------------


@dataclass(frozen=True)
class ActorPool:
    """One pool of Ray workers a stage starts: what one member asks for and how many run at once.

    `bundles` is one member's request: one bundle for an actor or a task, a placement group's bundles
    for a vLLM engine replica (one per tensor x pipeline parallel worker). Every `group` consecutive
    bundles must share a node (vLLM's tensor-parallel group); 0 = the whole request on one node.
    `min_size` members start before any row moves (Ray Data's minimum pool size), `max_size` at most.
    """

    role: str
    bundles: tuple[dict[str, float], ...]
    min_size: int = 1
    max_size: int = 1
    group: int = 0
    # Why the request is this shape, for the message (e.g. "tensor_parallel_size=4").
    note: str = ""
    # The config keys that set one member's request, and the one that sets how many must start (or how
    # big one is), for the messages (e.g. "`doc2query.resources.concurrency`").
    knob: str = ""
    scale: str = ""

    def node_groups(self) -> list[dict[str, float]]:
        """One member's request cut into what must land on one node each (summed bundles)."""
        size = self.group or len(self.bundles)
        return [_add(self.bundles[i : i + size]) for i in range(0, len(self.bundles), size)]

    def describe(self) -> str:
        """e.g. `vLLM engine replica: 4 x {CPU: 1, GPU: 1} on one node (tensor_parallel_size=4), 1..2 at once`."""
        if len(self.bundles) == 1:
            shape = _show(self.bundles[0])
        else:
            kinds = {_show(b) for b in self.bundles}
            shape = (f"{len(self.bundles)} x {kinds.pop()}" if len(kinds) == 1
                     else " + ".join(_show(b) for b in self.bundles))
            size = self.group or len(self.bundles)
            shape += " on one node" if size >= len(self.bundles) else f", {size} per node"
        note = f" ({self.note})" if self.note else ""
        count = f"{self.min_size}" if self.min_size == self.max_size else f"{self.min_size}..{self.max_size}"
        return f"{self.role}: {shape}{note}, {count} at once"


@dataclass(frozen=True)
class Phase:
    """Pools that run at the same time (one stage's streaming operators, or the build of one of its
    indexes); a stage's phases run one after another."""

    name: str
    pools: tuple[ActorPool, ...]


def phase_problems(stage: str, phase: Phase, nodes: list[dict]) -> list[str]:
    """Why `phase` cannot start on `nodes` (`ray.nodes()`-shaped; dead ones ignored), one line per reason."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    if not alive:
        return [f"stage {stage}: the cluster has no live node"]
    where = f"stage {stage}" if phase.name == stage else f"stage {stage} ({phase.name})"
    problems = []
    for pool in phase.pools:
        for group in pool.node_groups():
            if not any(fits(group, node) for node in alive):
                problems.append(_no_node(where, pool, group, alive))
                break
    if problems:
        return problems
    items = [g for pool in phase.pools for _ in range(pool.min_size) for g in pool.node_groups()]
    if pack(items, alive):
        return []
    need, total = _add(items), _add(alive)
    started = ", ".join(f"{p.min_size} x {p.role}" for p in phase.pools)
    knobs = " / ".join(dict.fromkeys(p.scale for p in phase.pools if p.scale))
    lower = f" Lower {knobs}, or add nodes." if knobs else " Add nodes."
    short = [k for k, v in sorted(need.items()) if v > total.get(k, 0.0)]
    head = f"{where}: the workers that must start at once ({started}) need {_amounts(need)}"
    if short:
        has = ", ".join(_amount(k, total.get(k, 0.0)) for k in short)
        return [f"{head}; the cluster has {has}.{lower}"]
    return [f"{head}: the cluster's totals hold them but its nodes do not (each group needs one node).{lower}"]


def _no_node(where: str, pool: ActorPool, group: dict[str, float], alive: list[dict]) -> str:
    note = f" ({pool.note})" if pool.note else ""
    what = "a bundle of " if len(pool.bundles) > 1 else ""
    lacks = []
    for key, amount in sorted(group.items(), key=lambda kv: (kv[0] != "GPU", kv[0])):
        best = max(node.get(key, 0.0) for node in alive)
        if amount > 0 and best < amount:
            lacks.append(f"the largest node has {_amount(key, best)}" if best > 0 else f"no node has {_label(key)}")
    lack = "; ".join(lacks) or "no node has all of it at once"
    change = f" Change {pool.knob}, or run on nodes that have this." if pool.knob else ""
    return f"{where}: {pool.role} needs {what}{_amounts(group)} on one node{note}; {lack}.{change}"


def pack(items: list[dict[str, float]], nodes: list[dict[str, float]], max_steps: int = 200_000) -> bool:
    """True when every item (resources that must share a node) fits on the nodes at once.

    Exact search, largest items first, skipping a node whose free resources equal one already tried
    for the same item; past `max_steps` it answers True (the plan does not refuse what it could not
    rule out; Ray itself then decides).
    """
    order = sorted(items, key=lambda g: (-g.get("GPU", 0.0), -g.get("CPU", 0.0), -sum(g.values())))
    free = [dict(n) for n in nodes]
    steps = [0]

    def place(i: int) -> bool:
        if i == len(order):
            return True
        steps[0] += 1
        if steps[0] > max_steps:
            return True
        item, tried = order[i], []
        for node in free:
            if not fits(item, node) or node in tried:
                continue
            tried.append(dict(node))
            for key, amount in item.items():
                node[key] = node.get(key, 0.0) - amount
            if place(i + 1):
                return True
            for key, amount in item.items():
                node[key] += amount
        return False

    return place(0)


def plan_problems(plan: list[tuple[str, tuple[Phase, ...]]], nodes: list[dict]) -> list[str]:
    """Every reason the stages' phases cannot start on `nodes`, in stage order; [] when all can."""
    return [p for stage, phases in plan for phase in phases for p in phase_problems(stage, phase, nodes)]


def format_plan(plan: list[tuple[str, tuple[Phase, ...]]], nodes: list[dict]) -> list[str]:
    """The plan as printed by `fusegen plan`: each stage's phases, their pools and what starts at once."""
    alive = [n for n in nodes if n.get("Alive", True)]
    lines = [f"cluster: {len(alive)} node(s): " + "; ".join(
        f"{n.get('NodeManagerAddress', '?')} {_show(n.get('Resources', {}))}" for n in alive)]
    for stage, phases in plan:
        lines.append(stage)
        for phase in phases:
            indent = "  "
            if phase.name != stage:
                lines.append(f"  {phase.name} (before the stage)")
                indent = "    "
            for pool in phase.pools:
                lines.append(f"{indent}{pool.describe()}")
            items = [g for pool in phase.pools for _ in range(pool.min_size) for g in pool.node_groups()]
            most = [g for pool in phase.pools for _ in range(pool.max_size) for g in pool.node_groups()]
            lines.append(f"{indent}at once: {_show(_add(items))}, at most {_show(_add(most))}")
    return lines


def wait_until_plan_fits(
    plan: list[tuple[str, tuple[Phase, ...]]],
    grace_s: float,
    knob: str,
    nodes: Callable[[], list[dict]] | None = None,
    poll_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once the cluster can start every stage's pools; raise after `grace_s` seconds if not.

    Raises:
        StageUnschedulableError: one line per stage (and index build) that cannot start, naming what
            it lacks, then the cluster's nodes.
    """
    if nodes is None:
        import ray

        nodes = ray.nodes
    deadline = clock() + grace_s
    while True:
        current = nodes()
        problems = plan_problems(plan, current)
        if not problems:
            return
        if clock() >= deadline:
            waited = f"waited {grace_s:g} s (`{knob}`)" if grace_s else f"no wait (`{knob}`)"
            raise StageUnschedulableError(plan_error(problems, current, waited))
        log.warning("%s; waiting up to %.0f s for nodes that fit (`%s`)", problems[0], grace_s, knob)
        sleep(min(poll_s, max(deadline - clock(), 0.0)))


def plan_error(problems: list[str], nodes: list[dict], waited: str) -> str:
    """The message of a refused plan: one line per problem, then the nodes and how long it waited."""
    shown = "; ".join(f"{n.get('NodeManagerAddress', '?')} {_show(n.get('Resources', {}))}"
                      for n in nodes if n.get("Alive", True))
    return ("this config cannot be scheduled on the cluster; nothing was run:\n  " + "\n  ".join(problems)
            + f"\n(nodes: {shown or 'none'}; {waited})")


def _add(dicts) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in dicts:
        for key, amount in d.items():
            out[key] = out.get(key, 0.0) + amount
    return out


def _label(key: str) -> str:
    return f"the label {key}" if key.startswith("accelerator_type:") else key


def _amount(key: str, value: float) -> str:
    if key in ("GPU", "CPU"):
        return f"{value:g} {key}{'' if value == 1 else 's'}"
    if key.startswith("accelerator_type:"):
        return f"the label {key}"
    if key == "memory":
        return f"{value / 2**30:.1f} GiB memory"
    return f"{value:g} {key}"


def _amounts(resources: dict[str, float]) -> str:
    order = sorted(resources, key=lambda k: ({"GPU": 0, "CPU": 1}.get(k, 2), k))
    kept = [k for k in order if resources[k] > 0]
    return " + ".join(_amount(k, resources[k]) for k in kept) or "nothing"


def _show(resources: dict[str, float]) -> str:
    kept = {k: v for k, v in sorted(resources.items()) if not k.startswith(_HIDDEN)}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in kept.items()) + "}"
