"""The plan (pipeline/scheduling.py, `Stage.schedule`): every stage's worker pools against a cluster
description, without Ray. The shipped GPU configs fit one 8-GPU node; a tensor-parallel group larger
than any node, a custom resource or accelerator no node has, more actors than the GPUs, or actors that
fit the totals but not the nodes are refused, naming the stage and what it lacks."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.errors import StageUnschedulableError
from pipeline.rundir import RunContext
from pipeline.runner import stage_plan
from pipeline.scheduling import ActorPool, Phase, format_plan, pack, plan_problems, wait_until_plan_fits
from pipeline.settings import build_stages, load_config
from pipeline.stage import Resources, actor_pool, actor_request


def node(name: str = "10.0.0.1", **resources: float) -> dict:
    return {"Alive": True, "NodeManagerAddress": name, "Resources": {"memory": 1e12, **resources}}


EIGHT_GPUS = [node(CPU=96, GPU=8)]
TWO_FOUR_GPU_NODES = [node("10.0.0.1", CPU=48, GPU=4), node("10.0.0.2", CPU=48, GPU=4)]
# The e2e session cluster (tests/e2e/conftest.py): a 2-CPU head and a 1-CPU node with `model_node`.
E2E_CLUSTER = [node("head", CPU=2), node("n2", CPU=1, model_node=2)]


def plan_of(repo_root, config: str, *overrides: str) -> list:
    cfg = load_config(repo_root / "configs" / config, list(overrides))
    return stage_plan(build_stages(cfg, RunContext.create(cfg, "/nonexistent/plan-run")))


@pytest.mark.parametrize("config", ["gpu.yaml", "megapairs-gpu.yaml"])
def test_shipped_gpu_configs_fit_one_8_gpu_node(repo_root, config):
    assert plan_problems(plan_of(repo_root, config), EIGHT_GPUS) == []


@pytest.mark.parametrize("config", ["demo.yaml", "base.yaml", "megapairs-demo.yaml", "vllm-cpu.yaml"])
def test_shipped_cpu_configs_fit_the_e2e_cluster(repo_root, config):
    assert plan_problems(plan_of(repo_root, config), E2E_CLUSTER) == []


def test_images_stage_starts_its_retriever_describer_and_diffuser_at_once(repo_root):
    """gpu.yaml's images phase: 2 ImagesFn + one TP-4 vLLM replica + 2 DrawFn = the node's 8 GPUs."""
    plan = dict(plan_of(repo_root, "gpu.yaml"))
    index, images = plan["images"]
    assert index.name == "images:pool" and images.name == "images"
    assert [(p.role, p.min_size, p.max_size) for p in images.pools] == [
        ("ImagesFn actor", 2, 2),
        ("vLLM engine replica", 1, 2),
        ("vLLM chat_template actor", 1, 2),
        ("vLLM tokenize actor", 1, 2),
        ("vLLM detokenize actor", 1, 2),
        ("DrawFn actor", 2, 2),
    ]
    replica = images.pools[1]
    assert replica.bundles == ({"CPU": 2.0, "GPU": 1.0},) * 4 and replica.node_groups() == [{"CPU": 8.0, "GPU": 4.0}]
    lines = format_plan([("images", (images,))], EIGHT_GPUS)
    assert "  at once: {CPU: 19, GPU: 8}, at most {CPU: 30, GPU: 12}" in lines
    # One more diffuser and the phase no longer fits.
    more = dict(plan_of(repo_root, "gpu.yaml", "images.resources.concurrency=3"))
    assert plan_problems([("images", more["images"])], EIGHT_GPUS) == [
        ("stage images: the workers that must start at once (3 x ImagesFn actor, 1 x vLLM engine replica, "
        "1 x vLLM chat_template actor, 1 x vLLM tokenize actor, 1 x vLLM detokenize actor, 3 x DrawFn actor) "
        "need 10 GPUs + 23 CPUs; the cluster has 8 GPUs. Lower `images.resources.concurrency` / "
        "`images.generation.llm.tensor_parallel_size`, or add nodes.")
    ]


def test_tensor_parallel_group_larger_than_any_node_is_refused_naming_the_stage(repo_root):
    problems = plan_problems(plan_of(repo_root, "gpu.yaml", "doc2query.llm.tensor_parallel_size=16"), EIGHT_GPUS)
    assert problems == [
        ("stage doc2query: vLLM engine replica needs a bundle of 16 GPUs + 16 CPUs on one node "
        "(tensor_parallel_size=16); the largest node has 8 GPUs. Change `doc2query.llm.tensor_parallel_size` / "
        "`doc2query.resources.num_cpus` / `doc2query.llm.vllm_device`, or run on nodes that have this.")
    ]


def test_a_tp_group_must_fit_one_node_even_when_the_cluster_has_the_gpus(repo_root):
    tp4 = plan_of(repo_root, "gpu.yaml", "doc2query.llm.tensor_parallel_size=4")
    tp8 = plan_of(repo_root, "gpu.yaml", "doc2query.llm.tensor_parallel_size=8")
    assert [p for p in plan_problems(tp4, TWO_FOUR_GPU_NODES) if "doc2query" in p] == []
    refused = [p for p in plan_problems(tp8, TWO_FOUR_GPU_NODES) if "doc2query" in p]
    assert len(refused) == 1 and "needs a bundle of 8 GPUs + 8 CPUs on one node" in refused[0]
    assert "the largest node has 4 GPUs" in refused[0]


def test_pipeline_parallel_stages_may_sit_on_different_nodes(repo_root):
    """TP 4 x PP 2: two TP groups of 4 GPUs, one per 4-GPU node."""
    plan = plan_of(repo_root, "gpu.yaml", "doc2query.llm.tensor_parallel_size=4",
                   "doc2query.llm.pipeline_parallel_size=2", "doc2query.resources.concurrency=1")
    doc2query = dict(plan)["doc2query"][0]
    assert doc2query.pools[0].node_groups() == [{"CPU": 4.0, "GPU": 4.0}] * 2
    assert plan_problems([("doc2query", (doc2query,))], TWO_FOUR_GPU_NODES) == []
    assert plan_problems([("doc2query", (doc2query,))], [node(CPU=48, GPU=4)]) == [
        ("stage doc2query: the workers that must start at once (1 x vLLM engine replica, 1 x vLLM chat_template "
        "actor, 1 x vLLM tokenize actor, 1 x vLLM detokenize actor) need 8 GPUs + 11 CPUs; the cluster has 4 GPUs. "
        "Lower `doc2query.llm.tensor_parallel_size`, or add nodes.")
    ]


def test_custom_resource_no_node_has_is_refused_for_the_index_build_and_the_stage(repo_root):
    plan = plan_of(repo_root, "gpu.yaml", "gme_score.resources.custom={model_node: 1}")
    problems = [p for p in plan_problems(plan, EIGHT_GPUS)]
    assert problems == [
        ("stage gme_score (gme_score:pool): GmePoolEmbedFn actor needs 1 GPU + 2 CPUs + 1 model_node on one node; "
        "no node has model_node. Change `gme_score.resources.num_gpus` / `num_cpus` / `custom`, or run on nodes "
        "that have this."),
        ("stage gme_score: GmeScoreFn actor needs 1 GPU + 2 CPUs + 1 model_node on one node; no node has "
        "model_node. Change `gme_score.resources.num_gpus` / `num_cpus` / `custom`, or run on nodes that have this."),
    ]
    assert plan_problems(plan, [node(CPU=96, GPU=8, model_node=4)]) == []


def test_accelerator_type_needs_a_node_with_that_label(repo_root):
    plan = plan_of(repo_root, "megapairs-gpu.yaml", "instruct.llm.accelerator_type=H100")
    problems = plan_problems(plan, EIGHT_GPUS)
    assert len(problems) == 1 and problems[0].startswith("stage instruct: vLLM engine replica needs 1 GPU + 1 CPU")
    assert "no node has the label accelerator_type:H100" in problems[0]
    assert plan_problems(plan, [node(CPU=96, GPU=8, **{"accelerator_type:H100": 1})]) == []


def test_more_actors_than_gpus_is_refused_with_totals(repo_root):
    plan = plan_of(repo_root, "gpu.yaml", "clip_filter.resources.concurrency=12")
    assert [p for p in plan_problems(plan, EIGHT_GPUS) if "clip_filter" in p] == [
        ("stage clip_filter: the workers that must start at once (12 x ClipScoreFn actor) need 12 GPUs + 12 CPUs; "
        "the cluster has 8 GPUs. Lower `clip_filter.resources.concurrency`, or add nodes.")
    ]


def test_actors_that_fit_the_totals_but_not_the_nodes_are_refused():
    two_gpu_actor = ActorPool("Fn actor", ({"CPU": 1.0, "GPU": 2.0},), 3, 3, scale="`s.resources.concurrency`")
    nodes = [node("a", CPU=8, GPU=3), node("b", CPU=8, GPU=3)]
    assert plan_problems([("s", (Phase("s", (two_gpu_actor,)),))], nodes) == [
        ("stage s: the workers that must start at once (3 x Fn actor) need 6 GPUs + 3 CPUs: the cluster's totals "
        "hold them but its nodes do not (each group needs one node). Lower `s.resources.concurrency`, or add nodes.")
    ]


def test_declared_memory_counts():
    pool = ActorPool("Fn actor", ({"CPU": 1.0, "memory": 64 * 2**30},), 1, 1)
    problems = plan_problems([("s", (Phase("s", (pool,)),))], [node(CPU=8, GPU=0) | {"Resources": {"CPU": 8,
                                                                                                   "memory": 2**34}}])
    assert problems == [("stage s: Fn actor needs 1 CPU + 64.0 GiB memory on one node; the largest node has "
                        "16.0 GiB memory.")]


def test_pack_backtracks_where_first_fit_would_fail():
    """Largest first, first fit puts the 2-GPU item on node a and leaves no room for the 3-CPU one."""
    items = [{"GPU": 1.0, "CPU": 3.0}, {"GPU": 2.0, "CPU": 1.0}]
    nodes = [{"GPU": 2.0, "CPU": 4.0}, {"GPU": 2.0, "CPU": 1.0}]
    assert pack(items, nodes) is True
    assert pack([*items, {"GPU": 1.0}], nodes) is True
    assert pack([*items, {"GPU": 2.0}], nodes) is False


def test_dead_nodes_and_an_empty_cluster():
    pool = actor_pool("Fn", Resources(num_gpus=1), "s")
    phases = (Phase("s", (pool,)),)
    assert plan_problems([("s", phases)], [{**node(CPU=8, GPU=8), "Alive": False}]) == [
        "stage s: the cluster has no live node"
    ]


def test_actor_request_is_what_actor_map_asks_for():
    res = Resources(num_cpus=2, num_gpus=0.5, concurrency=3, custom={"model_node": 1})
    assert actor_request(res) == {"CPU": 2.0, "GPU": 0.5, "model_node": 1}
    assert actor_request(res, num_gpus=0) == {"CPU": 2.0, "model_node": 1}
    pool = actor_pool("Fn", res, "s")
    assert (pool.bundles, pool.min_size, pool.max_size) == (({"CPU": 2.0, "GPU": 0.5, "model_node": 1},), 3, 3)


class FakeClock:
    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_run_check_waits_for_an_autoscaler_then_returns(repo_root):
    plan = plan_of(repo_root, "gpu.yaml")
    clock, grown = FakeClock(), [[node(CPU=8)], [node(CPU=8)], EIGHT_GPUS]
    wait_until_plan_fits(plan, 60, "ray.schedule_grace_s", nodes=lambda: grown.pop(0), poll_s=5,
                         clock=clock, sleep=clock.sleep)
    assert (clock.sleeps, grown) == ([5, 5], [])


def test_run_check_refuses_after_the_grace_period_listing_every_stage(repo_root):
    plan = plan_of(repo_root, "gpu.yaml")
    clock = FakeClock()
    with pytest.raises(StageUnschedulableError) as info:
        wait_until_plan_fits(plan, 12, "ray.schedule_grace_s", nodes=lambda: [node(CPU=8)], poll_s=5,
                             clock=clock, sleep=clock.sleep)
    message = str(info.value)
    assert message.startswith("this config cannot be scheduled on the cluster; nothing was run:\n  stage doc2query: ")
    stages = [line.split(":")[0].split(" (")[0] for line in message.splitlines()[1:-1]]
    assert stages == ["  stage doc2query", "  stage consistency", "  stage consistency", "  stage entities",
                      "  stage images", "  stage images", "  stage images", "  stage images",
                      "  stage clip_filter", "  stage gme_score",
                      "  stage gme_score", "  stage negatives", "  stage negatives"]
    assert message.endswith("(nodes: 10.0.0.1 {CPU: 8}; waited 12 s (`ray.schedule_grace_s`))")
    assert clock.sleeps == [5, 5, 2]


def test_cli_plan_prints_the_pools_and_exits_0_when_they_fit(repo_root, capsys):
    code = main(["plan", str(repo_root / "configs/gpu.yaml"), "--cluster", json.dumps([{"CPU": 96, "GPU": 8}])])
    out = capsys.readouterr().out
    assert code == 0
    assert "cluster: 1 node(s): node1 {CPU: 96, GPU: 8}" in out
    assert ("doc2query\n  vLLM engine replica: 4 x {CPU: 1, GPU: 1} on one node (tensor_parallel_size=4), "
            "1..2 at once\n") in out
    assert out.rstrip().endswith("plan: every stage can start on these nodes")


def test_cli_plan_refuses_with_exit_2_naming_the_stage(repo_root, tmp_path, capsys):
    cluster = tmp_path / "nodes.json"
    cluster.write_text(json.dumps([{"CPU": 48, "GPU": 2}, {"CPU": 48, "GPU": 2}]))
    code = main(["plan", str(repo_root / "configs/gpu.yaml"), "--cluster", str(cluster),
                 "--set", "consistency.resources.concurrency=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert ("stage doc2query: vLLM engine replica needs a bundle of 4 GPUs + 4 CPUs on one node "
            "(tensor_parallel_size=4); the largest node has 2 GPUs.") in err


def test_cli_plan_rejects_a_cluster_that_is_not_a_list_of_nodes(repo_root, capsys):
    assert main(["plan", str(repo_root / "configs/gpu.yaml"), "--cluster", '[{"GPU": "eight"}]']) == 2
    assert "--cluster: must be a JSON list of objects of resource amounts" in capsys.readouterr().err


def test_vllm_replica_is_the_processors_placement_group():
    """The plan's replica is the placement group `vllm_processor_config` hands ray.data.llm, and its pool
    sizes are the processor's (1 to `concurrency` replicas)."""
    from pipeline.models.llm_config import LLMConfig
    from pipeline.models.vllm_backend import replica_pools, vllm_processor_config

    cfg = LLMConfig(backend="vllm", tensor_parallel_size=2, pipeline_parallel_size=2)
    resources = Resources(num_cpus=3, concurrency=5)
    built = vllm_processor_config(cfg, "/m", resources)
    engine, *helpers = replica_pools(cfg, resources, "s", "s.llm")
    assert list(engine.bundles) == built.placement_group_config["bundles"]
    assert (engine.min_size, engine.max_size, built.concurrency) == (1, 5, 5)
    assert engine.node_groups() == [{"CPU": 6.0, "GPU": 2.0}, {"CPU": 6.0, "GPU": 2.0}]
    assert [h.role for h in helpers] == ["vLLM chat_template actor", "vLLM tokenize actor", "vLLM detokenize actor"]
    cpu = LLMConfig(backend="vllm", vllm_device="cpu", gpu_memory_utilization=0.05)
    cpu_engine, *cpu_helpers = replica_pools(cpu, resources, "s", "s.llm")
    assert cpu_engine.bundles == ({"CPU": 3.0},)
    assert {h.bundles[0]["CPU"] for h in cpu_helpers} == {vllm_processor_config(cpu, "/m", resources)
                                                          .chat_template_stage["num_cpus"]}
