"""pipeline/models/vllm_embed.py: GME requests for `ray.data.llm` embed (prompt = gme.render_text, images
sized and attached as data URLs), the restored rows (float32 unit vectors, fixed reject reasons) and the
embed processor config. Pure functions and the real `ray.data.llm` config class; no engine, no Ray
cluster (the engine runs in tests/vllm/test_vllm_embed.py)."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.errors import PipelineConfigError
from pipeline.models.gme import DEFAULT_INSTRUCTION, IMAGE_PLACEHOLDER, GmeConfig, GmeInput, render_text
from pipeline.models.llm import LLMConfig
from pipeline.models.vllm_backend import CARRY, INFERENCE_FAILED, PROMPT_TOO_LONG
from pipeline.models.vllm_embed import (
    EMBED_DETAIL,
    EMBED_ERROR,
    EMBEDDING,
    POOLER,
    STAND_IN,
    EmbedColumns,
    check_lengths,
    embed_postprocess_row,
    embed_processor_config,
    embed_request,
    embed_restore_row,
    prompt_max_tokens,
    sequential_positions,
    typed_batch,
)
from pipeline.stage import Resources

GME = GmeConfig(min_image_tokens=4, max_image_tokens=16, max_length=80)
COLUMNS = EmbedColumns(text="text", title="title", image="image", instruction="instruction")
QUERY = "Find the passage."
CPU = {"backend": "vllm", "vllm_device": "cpu", "gpu_memory_utilization": 0.05}


def _png(size: tuple[int, int] = (60, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(buf, format="PNG")
    return buf.getvalue()


def _request(row: dict, columns: EmbedColumns = COLUMNS, load_image=None) -> dict:
    return embed_request(row, columns, GME, load_image)


def _image_of(request: dict) -> Image.Image:
    """The image the engine's process gets: the request's, unpickled (Ray Data pickles a block's objects)."""
    image = pickle.loads(pickle.dumps(request["multimodal_data"]["image"]))
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    return image


# --- requests ------------------------------------------------------------------------------------


def test_candidate_prompt_is_render_text_with_the_default_instruction_and_the_title():
    row = {"id": "p", "title": "Frida Kahlo", "text": "A painter.", "instruction": None, "image": None}
    prompt = _request(row)["prompt"]
    assert prompt == render_text(GmeInput(text="A painter.", title="Frida Kahlo"))
    assert f"system\n{DEFAULT_INSTRUCTION}<|im_end|>" in prompt


def test_query_prompt_carries_the_row_instruction():
    row = {"id": "q", "text": "Who painted this?", "instruction": QUERY, "image": None}
    assert _request(row)["prompt"] == render_text(GmeInput(text="Who painted this?", instruction=QUERY))


def test_image_row_gets_the_placeholder_and_the_gme_sized_image_itself():
    row = {"id": "f", "text": "Which tower?", "instruction": QUERY, "image": {"bytes": _png(), "path": None}}
    request = _request(row)
    image = _image_of(request)
    assert request["prompt"] == render_text(GmeInput(text="Which tower?", image=image, instruction=QUERY))
    assert IMAGE_PLACEHOLDER in request["prompt"] and image.width % 28 == 0 and image.height % 28 == 0


def test_image_only_row_is_embedded_with_an_empty_body():
    request = _request({"id": "i", "text": None, "image": _png()})
    assert (request["_skip_reason"], request["prompt"].count(IMAGE_PLACEHOLDER)) == ("", 1)


def test_image_references_are_resolved_with_the_given_loader():
    store = {"sha256:1": _png()}
    request = _request({"id": "i", "text": "x", "image": "sha256:1"}, load_image=store.get)
    assert _image_of(request).mode == "RGB"


def test_text_row_beside_an_image_column_sends_no_image_and_no_placeholder():
    request = _request({"id": "t", "text": "Plain.", "image": None})
    assert request["multimodal_data"] is None
    assert IMAGE_PLACEHOLDER not in request["prompt"]


def test_rows_without_an_image_column_send_no_multimodal_data():
    request = _request({"id": "t", "text": "Plain."}, EmbedColumns())
    assert "multimodal_data" not in request and request["prompt"] == render_text(GmeInput(text="Plain."))


def test_prompts_are_cut_at_max_length_from_the_right():
    assert _request({"id": "t", "text": "Plain."}, EmbedColumns())["tokenization_kwargs"] == {
        "truncation": True,
        "max_length": GME.max_length,
        "truncation_side": "right",
    }


def test_image_rows_are_cut_before_the_placeholder_expands_so_both_backends_keep_the_same_text():
    # 56 x 28 pixels = 2 image tokens: the one placeholder token vLLM counts becomes 2 in GmeEmbedder.
    assert prompt_max_tokens(GME, Image.new("RGB", (56, 28))) == GME.max_length - 1
    assert prompt_max_tokens(GME, None) == GME.max_length


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"text": "  ", "title": None, "image": None}, "error:empty_input"),
        ({"text": "x", "image": {"bytes": b"not an image", "path": None}}, "error:image_not_an_image"),
        ({"text": "x", "image": _png((4000, 4))}, "error:image_aspect_ratio"),
    ],
)
def test_rows_gme_cannot_embed_are_marked_and_send_only_a_stand_in(row, reason):
    request = _request({"id": "r", **row})
    assert (request["_skip_reason"], request["prompt"]) == (reason, STAND_IN)


def test_a_skipped_rows_stand_in_answer_or_error_is_dropped_for_its_reason():
    row = {"id": "e", "text": " "}
    assert _done(row, embeddings=np.array([1.0, 0.0], np.float32))[EMBEDDING] is None
    out = _done(row, __inference_error__="RuntimeError: boom")
    assert (out[EMBEDDING], out[EMBED_ERROR], out[EMBED_DETAIL]) == (None, "error:empty_input", "")


# --- restored rows -------------------------------------------------------------------------------


def _done(row: dict, **engine_output) -> dict:
    pre = embed_request(row, EmbedColumns(), GME, None)
    if "__inference_error__" in engine_output:
        # Error rows bypass the postprocess and keep the processor's whole row.
        return embed_restore_row({**pre, "embeddings": None, **engine_output})
    return embed_restore_row(embed_postprocess_row({**pre, **engine_output}))


def test_engine_vector_comes_back_float32_and_renormalised_with_the_row():
    row = {"id": "a", "text": "x", "_src": 3}
    out = _done(row, embeddings=np.array([3.0, 4.0], np.float32))
    assert out == {**row, EMBEDDING: pytest.approx([0.6, 0.8]), EMBED_ERROR: "", EMBED_DETAIL: ""}
    assert np.asarray(out[EMBEDDING], np.float32).tolist() == out[EMBEDDING]


def test_engine_refusing_a_long_prompt_is_prompt_too_long_with_its_message():
    message = "ValueError: This model's maximum context length is 256 tokens. However, you requested 300"
    out = _done({"id": "a", "text": "x"}, __inference_error__=message)
    assert (out[EMBEDDING], out[EMBED_ERROR], out[EMBED_DETAIL]) == (None, PROMPT_TOO_LONG, message)


def test_other_engine_errors_are_inference_failed():
    out = _done({"id": "a", "text": "x"}, __inference_error__="RuntimeError: boom")
    assert (out[EMBEDDING], out[EMBED_ERROR]) == (None, INFERENCE_FAILED)


@pytest.mark.parametrize("vector", [np.zeros(4, np.float32), np.array([np.nan, 1.0]), None])
def test_a_zero_nan_or_missing_vector_is_inference_failed(vector):
    out = _done({"id": "a", "text": "x"}, embeddings=vector)
    assert (out[EMBEDDING], out[EMBED_ERROR], bool(out[EMBED_DETAIL])) == (None, INFERENCE_FAILED, True)


def test_skipped_rows_come_back_with_their_reason_and_every_column():
    row = {"id": "e", "text": "", "title": None}
    pre = embed_request(row, EmbedColumns(title="title"), GME, None)
    assert embed_restore_row(pre) == {
        **row,
        EMBEDDING: None,
        EMBED_ERROR: "error:empty_input",
        EMBED_DETAIL: "",
    }
    assert pickle.loads(pre[CARRY]) == row


def test_embedding_column_is_typed_float32_lists_even_in_an_all_reject_block():
    mixed = typed_batch(pa.table({EMBEDDING: [[0.6, 0.8], None]}))
    rejects = typed_batch(pa.table({EMBEDDING: pa.array([None, None])}))
    assert {mixed.schema.field(EMBEDDING).type, rejects.schema.field(EMBEDDING).type} == {
        pa.list_(pa.float32())
    }
    assert mixed[EMBEDDING].to_pylist()[0] == pytest.approx([0.6, 0.8])


# --- processor config ----------------------------------------------------------------------------


def test_embed_config_pools_the_last_token_normalised_and_takes_the_prompt_as_given():
    built = embed_processor_config(LLMConfig(**CPU), "/m", Resources())
    assert (built.task_type, built.engine_kwargs["pooler_config"]) == ("embed", POOLER)
    assert POOLER == {"pooling_type": "LAST", "use_activation": True}
    stages = (built.chat_template_stage, built.tokenize_stage, built.detokenize_stage)
    assert [s["enabled"] for s in stages] == [False, False, False]
    assert built.prepare_multimodal_stage["enabled"] is False


def test_embed_config_feeds_gme_sequential_positions():
    built = embed_processor_config(LLMConfig(**CPU), "/m", Resources())
    assert built.engine_kwargs["hf_overrides"] is sequential_positions


def test_sequential_positions_drops_mrope_from_the_released_gme_config(tiny_cache):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_cache / "tiny" / "gme")
    before = dict(config.get_text_config().rope_parameters)
    after = sequential_positions(config)
    # What vLLM reads (transformers_utils.config.uses_mrope and get_rope): no section anywhere, so the
    # plain rotary embedding over 1D positions 0..n-1; theta and the rope type are kept.
    assert before["mrope_section"] == [4, 6, 6]
    assert [
        "mrope_section" in (getattr(part, "rope_parameters", None) or {})
        for part in (after, after.get_text_config())
    ] == [False, False]
    assert {k: v for k, v in before.items() if k != "mrope_section"} == after.get_text_config().rope_parameters


def test_sequential_positions_leaves_a_text_model_config_alone(tiny_cache):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_cache / "tiny" / "qwen2")
    before = dict(config.rope_parameters)
    assert sequential_positions(config).rope_parameters == before


def test_embed_config_needs_no_json_grammar():
    built = embed_processor_config(
        LLMConfig(backend="vllm", guided=True), "/m", Resources()
    )
    assert "structured_outputs_config" not in built.engine_kwargs


def test_embed_config_on_cpu_has_the_engine_as_its_only_stage():
    built = embed_processor_config(LLMConfig(**CPU), "/m", Resources())
    stages = (built.prepare_multimodal_stage, built.chat_template_stage, built.tokenize_stage,
              built.detokenize_stage)
    assert [s["enabled"] for s in stages] == [False] * 4
    assert (built.runtime_env, built.log_engine_metrics) == (
        {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
        False,
    )


def test_an_engine_shorter_than_gme_max_length_is_a_config_error():
    with pytest.raises(
        PipelineConfigError, match=r"gme_score: `llm.max_model_len` must be >= `gme.max_length`"
    ):
        check_lengths(LLMConfig(**CPU, max_model_len=64), GME, "gme_score")


def test_cuda_embed_config_keeps_the_gpu_engine_settings():
    cfg = LLMConfig(backend="vllm", tensor_parallel_size=2)
    built = embed_processor_config(cfg, "/m", Resources())
    assert built.placement_group_config["bundles"] == [{"CPU": 1.0, "GPU": 1.0}] * 2
    assert (built.runtime_env, built.log_engine_metrics, built.prepare_multimodal_stage) == (
        None,
        True,
        {"enabled": False},
    )
    assert (built.engine_kwargs["gpu_memory_utilization"], built.engine_kwargs["tensor_parallel_size"]) == (
        0.85,
        2,
    )
