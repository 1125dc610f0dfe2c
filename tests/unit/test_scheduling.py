"""pipeline/scheduling.py: requests no node can meet fail fast (or after the grace period), naming
the stage, the request and the nodes; requests that fit return at once. Nodes are `ray.nodes()`-shaped
dicts and the clock is fake, so no Ray and no waiting."""

from __future__ import annotations

import pytest

from pipeline.errors import StageUnschedulableError
from pipeline.scheduling import fits, unschedulable_reason, wait_until_schedulable

CPU_NODE = {
    "Alive": True,
    "NodeManagerAddress": "10.0.0.1",
    "Resources": {"CPU": 2.0, "memory": 8e9, "object_store_memory": 1e9, "node:10.0.0.1": 1.0},
}
GPU_NODE = {"Alive": True, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 8.0, "GPU": 1.0}}
DEAD_GPU_NODE = {**GPU_NODE, "Alive": False}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_bundle_fits_a_node_with_enough_of_every_resource():
    assert (fits({"CPU": 1, "GPU": 1}, GPU_NODE["Resources"]), fits({"GPU": 1}, CPU_NODE["Resources"])) == (
        True,
        False,
    )


def test_zero_amounts_do_not_need_the_resource():
    assert fits({"CPU": 1.0, "GPU": 0.0}, CPU_NODE["Resources"]) is True


def test_dead_nodes_do_not_count():
    assert unschedulable_reason([{"GPU": 1}], [CPU_NODE, DEAD_GPU_NODE]) == "no node has {GPU: 1}"


def test_bundles_that_each_fit_but_not_together_are_unschedulable():
    why = unschedulable_reason([{"GPU": 1}, {"GPU": 1}], [GPU_NODE])
    assert why == "the 2 bundles need {GPU: 2} together, more than the whole cluster has"


def test_gpu_request_on_a_cpu_cluster_fails_at_once_naming_stage_request_and_nodes():
    clock = FakeClock()
    with pytest.raises(StageUnschedulableError) as info:
        wait_until_schedulable(
            "doc2query",
            [{"CPU": 1.0, "GPU": 1.0}],
            0,
            "doc2query.llm.schedule_grace_s",
            "set vllm_device",
            nodes=lambda: [CPU_NODE],
            clock=clock,
            sleep=clock.sleep,
        )
    message = str(info.value)
    assert message.startswith(
        "doc2query: its actors ask for {CPU: 1, GPU: 1} but no node has {CPU: 1, GPU: 1}"
    )
    assert "10.0.0.1 {CPU: 2}" in message and "doc2query.llm.schedule_grace_s" in message
    assert "set vllm_device" in message and clock.sleeps == []


def test_unschedulable_request_waits_the_grace_period_then_fails():
    clock = FakeClock()
    with pytest.raises(StageUnschedulableError, match="waited 12 s"):
        wait_until_schedulable(
            "entities",
            [{"GPU": 1.0}],
            12,
            "k",
            nodes=lambda: [CPU_NODE],
            poll_s=5,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.sleeps == [5, 5, 2]


def test_request_returns_once_an_autoscaler_adds_a_node_that_fits():
    clock = FakeClock()
    cluster = [[CPU_NODE], [CPU_NODE], [CPU_NODE, GPU_NODE]]
    wait_until_schedulable(
        "doc2query",
        [{"GPU": 1.0}],
        60,
        "k",
        nodes=lambda: cluster.pop(0),
        poll_s=5,
        clock=clock,
        sleep=clock.sleep,
    )
    assert (clock.sleeps, cluster) == ([5, 5], [])


def test_request_that_fits_returns_without_sleeping():
    clock = FakeClock()
    wait_until_schedulable(
        "doc2query", [{"CPU": 1.0}], 0, "k", nodes=lambda: [CPU_NODE], clock=clock, sleep=clock.sleep
    )
    assert clock.sleeps == []
