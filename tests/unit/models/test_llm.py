"""pipeline/models/llm.py: the transformers JSON backend on the tiny Qwen2, and the vLLM row helpers.

The tiny model is the project's seeded random Qwen2 (pipeline.models.tiny), built once per session by
the `tiny_cache` fixture and loaded through `from_pretrained`. Its text is noise; the xgrammar
grammar is what makes it valid JSON (`guided: false` shows the noise). The watchdog test swaps the
engine's batch call for one that hangs.
"""

from __future__ import annotations

import json
import threading

import jsonschema
import pyarrow as pa
import pytest

from pipeline.errors import PipelineConfigError
from pipeline.models.llm import (
    LLM_ERROR,
    MESSAGES,
    RAW,
    HFChatJSON,
    HFGenerateFn,
    LLMConfig,
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
    assert len(outputs) == len(CONVERSATIONS)
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
    fn = HFGenerateFn(model_path, {"max_new_tokens": 48, "max_input_tokens": 64}, SCHEMA, batch_size=2)
    table = pa.table({"id": ["a", "b"], MESSAGES: [json.dumps(c) for c in CONVERSATIONS[:2]]})
    out = fn(table)
    assert (out.column_names, out[LLM_ERROR].to_pylist()) == (["id", MESSAGES, RAW, LLM_ERROR], ["", ""])


def test_abandoned_batch_stops_at_its_next_token(engine):
    cancel = threading.Event()
    cancel.set()
    prompt = engine.tok.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)
    ((raw, error),) = engine._generate_batch([prompt], cancel)
    assert (len(engine.tok(raw, add_special_tokens=False)["input_ids"]), error) == (
        1,
        "error:truncated_output",
    )


def test_generate_fn_marks_a_hung_batch_error_timeout_and_goes_on(engine, monkeypatch):
    release = threading.Event()
    calls = []

    def hang_first_batch(prompts, cancel=None):
        calls.append(len(prompts))
        if len(calls) <= 2:
            release.wait()
            return [("late", "")] * len(prompts)
        return [("{}", "")] * len(prompts)

    monkeypatch.setattr(engine, "_generate_batch", hang_first_batch)
    fn = HFGenerateFn.from_engine(engine, LLMConfig(timeout_s=0.1), batch_size=2)
    table = pa.table({MESSAGES: [json.dumps(c) for c in CONVERSATIONS]})
    try:
        errors = fn(table)[LLM_ERROR].to_pylist()
    finally:
        release.set()
    # Batches are formed by prompt length: the two shortest prompts hang (twice), the longest one runs.
    assert (sorted(errors), calls) == (["", "error:timeout", "error:timeout"], [2, 2, 1])


def test_unguided_tiny_model_output_is_not_json_for_some_prompt(model_path):
    unguided = HFChatJSON(model_path, LLMConfig(max_new_tokens=24, max_input_tokens=64, guided=False), SCHEMA)
    raws = [raw for raw, _ in unguided.generate(CONVERSATIONS, batch_size=3)]
    assert not all(_parses(raw) for raw in raws)


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def test_unguided_engine_compiles_no_grammar(model_path):
    assert HFChatJSON(model_path, LLMConfig(guided=False), SCHEMA).grammar is None


# --- LLMConfig -------------------------------------------------------------------------------------------


def test_llm_config_rejects_top_p_of_zero():
    with pytest.raises(PipelineConfigError, match="top_p"):
        LLMConfig(top_p=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout_s", 0),
        ("max_consecutive_timeouts", 0),
        ("request_timeout_s", 0),
        ("max_retries", -1),
        ("max_concurrent_requests", 0),
        ("retry_backoff_s", -0.5),
        ("base_url", "localhost:8000/v1"),
    ],
)
def test_llm_config_rejects_out_of_range_values(field, value):
    with pytest.raises(PipelineConfigError, match=f"`{field}`"):
        LLMConfig(**{field: value})


def test_llm_config_rejects_an_api_key_in_api_key_env_without_echoing_it():
    with pytest.raises(PipelineConfigError, match="NAME of the environment variable") as info:
        LLMConfig(api_key_env="sk-live-abc123")
    assert "sk-live-abc123" not in str(info.value)


def test_openai_timeout_s_below_request_timeout_s_is_rejected():
    with pytest.raises(PipelineConfigError, match="`timeout_s` must be >= `llm.request_timeout_s`"):
        LLMConfig(backend="openai", model="m", timeout_s=30, request_timeout_s=120)


def test_openai_backend_rejects_a_local_model_source_as_model():
    with pytest.raises(PipelineConfigError, match="`model` must be the model name the server serves"):
        LLMConfig(backend="openai", model="tiny:qwen2")


def test_llm_config_defaults_for_the_new_fields():
    cfg = LLMConfig()
    assert (cfg.guided, cfg.timeout_s, cfg.max_consecutive_timeouts, cfg.base_url, cfg.api_key_env) == (
        True,
        600.0,
        3,
        None,
        "OPENAI_API_KEY",
    )
    assert (cfg.request_timeout_s, cfg.max_retries, cfg.max_concurrent_requests, cfg.retry_backoff_s) == (
        120.0,
        4,
        8,
        1.0,
    )


def test_a_null_conversation_gets_an_empty_answer_without_a_model_call(engine, outputs, monkeypatch):
    """Rows that need no answer (the images stage asks only for rows that reach generation) cost nothing."""
    batches = []
    real = engine._generate_batch
    monkeypatch.setattr(engine, "_generate_batch", lambda prompts, cancel=None: batches.append(prompts) or real(prompts))
    results = engine.generate([None, CONVERSATIONS[0], None], batch_size=4)
    assert results[0] == results[2] == ("", "")
    assert results[1] == outputs[0]
    assert [len(b) for b in batches] == [1]


# --- the prefix cache: the shared system prompt is prefilled once, and the outputs do not change -----------

SHARED = [
    [{"role": "system", "content": "You answer with JSON about places. Rules: be short, name one place, "
                                   "say whether it is big, and say what kind of place it is."},
     {"role": "user", "content": question}]
    for question in ("Name a city in France.", "Name a town.",
                     "Name a village in the mountains, with a long question that pads the batch more than the others.")
]


def test_prefix_cache_gives_the_outputs_of_a_full_prefill(model_path):
    cached = HFChatJSON(model_path, LLMConfig(max_new_tokens=48), SCHEMA)
    full = HFChatJSON(model_path, LLMConfig(max_new_tokens=48, prefix_cache=False), SCHEMA)
    # batch 3: rows of three lengths, padded between the cached prefix and their own tokens; then batch 2 + 1.
    for batch in (3, 2):
        assert cached.generate(SHARED, batch) == full.generate(SHARED, batch)
    prefix = cached.tok.apply_chat_template(SHARED[0][:1], tokenize=False)
    assert len(cached.prefix.ids) >= len(cached.tok(prefix, add_special_tokens=False)["input_ids"]) - 2
    assert (cached.prefix.hits, full.prefix) == (2, None)  # filled by the first batch, reused by the next two


def test_prefix_cache_is_skipped_when_rows_share_few_tokens(model_path):
    cached = HFChatJSON(model_path, LLMConfig(max_new_tokens=48), SCHEMA)
    assert cached.generate(CONVERSATIONS[1:], 2) == HFChatJSON(
        model_path, LLMConfig(max_new_tokens=48, prefix_cache=False), SCHEMA).generate(CONVERSATIONS[1:], 2)
    assert cached.prefix.ids == []


def test_int8_quantised_engine_still_writes_schema_json(model_path):
    import torch

    int8 = HFChatJSON(model_path, LLMConfig(max_new_tokens=48, quantize="int8"), SCHEMA)
    assert not any(isinstance(m, torch.nn.Linear) for m in int8.model.modules())
    for raw, error in int8.generate(SHARED, 3):
        jsonschema.validate(json.loads(raw), SCHEMA)
        assert error == ""
