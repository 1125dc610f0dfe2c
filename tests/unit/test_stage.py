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
        assert cls.OPERATIONAL <= {f.name for f in dataclasses.fields(cls)}
