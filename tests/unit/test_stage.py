"""pipeline/stage.py: what enters a stage's fingerprint, and how many actors a stage starts."""

from __future__ import annotations

import contextlib
import dataclasses

from pipeline.models.llm import LLMConfig
from pipeline.stage import Resources
from pipeline.stages.doc2query import Doc2QueryConfig


def semantic(**llm) -> dict:
    return Doc2QueryConfig(llm=LLMConfig(**llm)).semantic_dict()


def test_operational_llm_fields_do_not_change_the_semantic_config():
    assert semantic() == semantic(timeout_s=5, max_retries=1, tensor_parallel_size=4, base_url="http://h:8000/v1")


def test_generation_fields_change_the_semantic_config():
    assert semantic() != semantic(max_new_tokens=17)
    assert semantic() != semantic(model="other")


def test_resources_keep_only_shard_rows():
    cfg = dataclasses.replace(Doc2QueryConfig(), resources=Resources(concurrency=7, batch_size=3, shard_rows=5))
    assert cfg.semantic_dict()["resources"] == {"shard_rows": 5}


def test_operational_names_are_real_fields():
    for cls in (LLMConfig, Resources):
        assert cls.OPERATIONAL and cls.OPERATIONAL <= {f.name for f in dataclasses.fields(cls)}


def test_named_inputs_resolve_to_the_output_of_the_named_earlier_stage():
    from typing import ClassVar

    import pytest

    from pipeline.errors import StageInputError
    from pipeline.runner import _inputs
    from pipeline.stage import Stage, StageConfig, StageOutput

    class Reader(Stage):
        name = "reader"
        config_cls = StageConfig
        inputs: ClassVar[dict[str, str]] = {"passages": "ingest"}

        def apply(self, ds):
            return ds

    outputs = {
        "ingest": StageOutput("ingest", "fp-ingest", ("01_ingest/part-000000-000000-000.parquet",)),
        "doc2query": StageOutput("doc2query", "fp-d2q", ("02_doc2query/part-000000-000000-000.parquet",)),
    }
    stage = Reader(StageConfig(), None)
    resolved = _inputs(stage, outputs)
    assert resolved == {"passages": outputs["ingest"]}
    stage.bind(resolved, {})
    assert stage.bound_inputs["passages"].parts == ("01_ingest/part-000000-000000-000.parquet",)
    with pytest.raises(StageInputError, match="reads the output of ingest.*stages so far: doc2query"):
        _inputs(stage, {"doc2query": outputs["doc2query"]})


def test_an_actor_pool_never_starts_more_actors_than_the_stage_has_shards():
    """Each actor loads its model: the runner says how many shards a stage gets (`shards_pending`) and
    `actor_map` starts min(concurrency, shards) actors; outside a run the config's concurrency holds."""
    from pipeline.stage import actor_map, pool_size, shards_pending

    class Recording:
        def map_batches(self, fn, **kwargs):
            self.compute = kwargs["compute"]
            return self

    four = Resources(concurrency=4)
    sizes = {}
    for pending in (None, 1, 3, 4, 9):
        with shards_pending(pending) if pending is not None else contextlib.nullcontext():
            ds = actor_map(Recording(), object, {}, four)
            sizes[pending] = (pool_size(four), ds.compute.min_size, ds.compute.max_size)
    assert sizes == {None: (4, 4, 4), 1: (1, 1, 1), 3: (3, 3, 3), 4: (4, 4, 4), 9: (4, 4, 4)}
    assert pool_size(four) == 4  # the runner's count ends with its block
