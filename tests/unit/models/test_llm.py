"""pipeline/models/llm.py: the transformers JSON backend on the tiny Qwen2, and the vLLM row helpers.

The tiny model is the project's seeded random Qwen2 (pipeline.models.tiny), built once per session by
the `tiny_cache` fixture and loaded through `from_pretrained`. Its text is noise; the xgrammar
grammar is what makes it valid JSON.
"""

from __future__ import annotations

import json
import pickle

import jsonschema
import pytest

from pipeline.errors import PipelineConfigError
from pipeline.models.llm import (
    CARRY,
    LLM_ERROR,
    MESSAGES,
    RAW,
    HFChatJSON,
    HFGenerateFn,
    LLMConfig,
    vllm_postprocess_row,
    vllm_preprocess_row,
    vllm_restore_row,
    vllm_sampling_params,
)

# Every string is capped and every other value is finite, so the grammar must close the object quickly.
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 12},
        "big": {"type": "boolean"},
        "kind": {"enum": ["town", "city", "village"]},
    },
    "required": ["city", "big", "kind"],
    "additionalProperties": False,
}
CONVERSATIONS = [
    [
        {"role": "system", "content": "Reply with JSON."},
        {"role": "user", "content": "Name a city in France."},
    ],
    [{"role": "user", "content": "Name a town."}],
    [
        {
            "role": "user",
            "content": "Name a village in the mountains, please, with a long prompt to pad the batch.",
        }
    ],
]


@pytest.fixture(scope="module")
def model_path(tiny_cache) -> str:
    return str(tiny_cache / "tiny" / "qwen2")


@pytest.fixture(scope="module")
def engine(model_path) -> HFChatJSON:
    return HFChatJSON(model_path, LLMConfig(max_new_tokens=48, max_input_tokens=64), SCHEMA)


@pytest.fixture(scope="module")
def outputs(engine) -> list[tuple[str, str]]:
    return engine.generate(CONVERSATIONS, batch_size=2)


def test_tiny_model_output_is_json_matching_the_schema(outputs):
    for raw, _ in outputs:
        jsonschema.validate(json.loads(raw), SCHEMA)


def test_tiny_model_output_has_no_error_when_the_grammar_finishes(outputs):
    assert [err for _, err in outputs] == ["", "", ""]


def test_generation_is_deterministic(engine, outputs):
    assert engine.generate(CONVERSATIONS, batch_size=2) == outputs


def test_prompt_over_max_input_tokens_is_flagged_without_generating(engine, monkeypatch):
    calls = []
    real = engine._generate_batch
    monkeypatch.setattr(
        engine, "_generate_batch", lambda prompts: calls.append(len(prompts)) or real(prompts)
    )
    long = [{"role": "user", "content": "many words " * 200}]
    results = engine.generate([long, CONVERSATIONS[1]], batch_size=4)
    assert (results[0], results[1][1], calls) == (("", "error:prompt_too_long"), "", [1])


def test_hitting_max_new_tokens_is_flagged_as_truncated_output(model_path):
    # A long free-form string cannot close within 4 new tokens.
    schema = {"type": "object", "properties": {"s": {"type": "string", "minLength": 50}}, "required": ["s"]}
    short = HFChatJSON(model_path, LLMConfig(max_new_tokens=4), schema)
    assert short.generate(CONVERSATIONS[:1], batch_size=1)[0][1] == "error:truncated_output"


def test_generate_fn_adds_raw_and_error_columns(model_path):
    import pyarrow as pa

    fn = HFGenerateFn(model_path, {"max_new_tokens": 48, "max_input_tokens": 64}, SCHEMA, batch_size=2)
    table = pa.table({"id": ["a", "b"], MESSAGES: [json.dumps(c) for c in CONVERSATIONS[:2]]})
    out = fn(table)
    assert (out.column_names, out[LLM_ERROR].to_pylist()) == (["id", MESSAGES, RAW, LLM_ERROR], ["", ""])


def test_llm_config_rejects_top_p_of_zero():
    with pytest.raises(PipelineConfigError, match="top_p"):
        LLMConfig(top_p=0)


# --- vLLM row helpers (pure functions; no vllm needed) --------------------------------------------------------

ROW = {"id": "gg", "text": "A passage.", "_src": 3, MESSAGES: json.dumps([{"role": "user", "content": "hi"}])}
SAMPLING = {"max_tokens": 10, "temperature": 0.0}


def test_vllm_preprocess_sends_messages_and_sampling_params():
    pre = vllm_preprocess_row(ROW, SAMPLING)
    assert (pre["messages"], pre["sampling_params"]) == ([{"role": "user", "content": "hi"}], SAMPLING)


def test_vllm_preprocess_carries_every_other_column_pickled():
    assert pickle.loads(vllm_preprocess_row(ROW, SAMPLING)[CARRY]) == {
        "id": "gg",
        "text": "A passage.",
        "_src": 3,
    }


def test_vllm_round_trip_restores_columns_and_adds_raw_text():
    pre = vllm_preprocess_row(ROW, SAMPLING)
    post = vllm_postprocess_row({**pre, "generated_text": '{"pairs": []}'})
    assert vllm_restore_row(post) == {
        "id": "gg",
        "text": "A passage.",
        "_src": 3,
        RAW: '{"pairs": []}',
        LLM_ERROR: "",
    }


def test_vllm_inference_error_becomes_llm_error_with_empty_raw():
    pre = vllm_preprocess_row(ROW, SAMPLING)
    restored = vllm_restore_row({**pre, "__inference_error__": "CUDA out of memory"})
    assert (restored[RAW], restored[LLM_ERROR], restored["id"]) == (
        "",
        "error:inference:CUDA out of memory",
        "gg",
    )


def test_vllm_inference_error_text_is_truncated():
    restored = vllm_restore_row({**vllm_preprocess_row(ROW, SAMPLING), "__inference_error__": "x" * 1000})
    assert len(restored[LLM_ERROR]) == len("error:inference:") + 200


def test_vllm_missing_generated_text_becomes_empty_raw():
    assert vllm_restore_row(vllm_postprocess_row(vllm_preprocess_row(ROW, SAMPLING)))[RAW] == ""


def test_vllm_sampling_params_put_the_schema_under_structured_outputs_json():
    params = vllm_sampling_params(LLMConfig(max_new_tokens=99), SCHEMA)
    assert (params["structured_outputs"], params["max_tokens"]) == ({"json": SCHEMA}, 99)


def test_vllm_sampling_params_seed_only_when_sampling():
    greedy = vllm_sampling_params(LLMConfig(temperature=0.0, seed=5), SCHEMA)
    sampled = vllm_sampling_params(LLMConfig(temperature=0.7, seed=5), SCHEMA)
    assert ("seed" in greedy, sampled.get("seed")) == (False, 5)
