"""pipeline/stage.py: what enters a stage's fingerprint."""

from __future__ import annotations

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
