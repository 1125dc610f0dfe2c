"""pipeline/stages/describe.py: word-limit draws, VLM prompt building with two images from the run's image
store, description parsing, captions mode, and the transformers VLM backend on a tiny random Qwen2-VL.

The snapshot of the rendered messages for tests/fixtures/pair.json is tests/unit/snapshots/
describe_messages.txt (STYLE R12); after an intended prompt change regenerate it with
`FUSEGEN_UPDATE_SNAPSHOTS=1 pytest tests/unit/stages/test_describe.py` and review the diff.
"""

from __future__ import annotations

import base64
import io
import json

import pyarrow as pa
import pytest
from PIL import Image

from pipeline.config import to_dict
from pipeline.errors import PipelineConfigError
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW, LLMConfig
from pipeline.prompts import default_prompts_dir, load_sources
from pipeline.stage import REASON, STATUS
from pipeline.stages.describe import (
    IMAGE_ERROR,
    PROMPTS,
    Describe,
    DescribeConfig,
    build_messages,
    captions_batch,
    draw_word_limit,
    parse_batch,
    parse_description,
    prompt_batch,
)
from tests.support.snapshots import assert_prompt_snapshot

GOOD = (
    "Both images show a golden retriever with a light coat. However, the Source Image shows the dog on a "
    "grey sofa, whereas the Target Image shows it running on a beach."
)


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return load_sources(default_prompts_dir(), PROMPTS)


def png(colour: tuple[int, int, int], size=(60, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


# --- word limit ---------------------------------------------------------------------------------------


def test_word_limit_is_reproducible_from_seed_and_row_id():
    ids = [f"q{i}~t{i}" for i in range(50)]
    assert [draw_word_limit(7, i, 60, 100) for i in ids] == [draw_word_limit(7, i, 60, 100) for i in ids]


def test_word_limit_stays_in_range_and_reaches_both_ends():
    drawn = {draw_word_limit(0, f"row{i}", 60, 100) for i in range(2000)}
    assert (min(drawn), max(drawn)) == (60, 100)


def test_word_limit_depends_on_the_seed():
    ids = [f"row{i}" for i in range(40)]
    assert [draw_word_limit(0, i, 60, 100) for i in ids] != [draw_word_limit(1, i, 60, 100) for i in ids]


def test_config_rejects_max_words_below_min_words():
    with pytest.raises(PipelineConfigError, match="max_words"):
        DescribeConfig(min_words=80, max_words=70)


# --- parse_description --------------------------------------------------------------------------------


def test_parse_description_keeps_a_text_in_the_template_shape():
    assert parse_description(f"  {GOOD}\n", "", True) == ("ok", "", GOOD)


@pytest.mark.parametrize("raw", ["", "   \n\t", None, '""'])
def test_parse_description_filters_an_empty_answer(raw):
    assert parse_description(raw, "", True)[:2] == ("filtered", "filter:empty_description")


@pytest.mark.parametrize(
    "raw",
    [
        "A dog on a sofa and a dog on a beach.",
        "Both images show a dog. The first is indoors and the second is outdoors.",
        "However, the Source Image shows a sofa, whereas the Target Image shows a beach. Both images show dogs.",
    ],
    ids=["no-shape", "no-however-whereas", "both-images-not-first"],
)
def test_parse_description_filters_an_off_template_answer_keeping_its_text(raw):
    assert parse_description(raw, "", True) == ("filtered", "filter:off_template", raw)


def test_parse_description_template_check_ignores_case_and_a_short_lead_in():
    raw = "In BOTH IMAGES a dog rests. HOWEVER, the source has a sofa, WHEREAS the target has sand."
    assert parse_description(raw, "", True)[0] == "ok"


def test_parse_description_without_require_template_keeps_any_text():
    assert parse_description("A dog and another dog.", "", False) == ("ok", "", "A dog and another dog.")


@pytest.mark.parametrize("error", ["error:truncated_output", "error:prompt_too_long", "error:timeout"])
def test_parse_description_rejects_with_the_backend_error(error):
    assert parse_description(GOOD[:40], error, True) == ("rejected", error, "")


# --- VLM messages -----------------------------------------------------------------------------------


def test_build_messages_puts_the_source_image_before_the_target_image(sources):
    user = build_messages(sources, 70)[1]["content"]
    images = [p["image"] for p in user if p["type"] == "image"]
    labels = [p["text"] for p in user if p["type"] == "text"]
    assert (images, labels[0].startswith("Source Image"), labels[1].startswith("Target Image")) == (
        ["source", "target"], True, True,
    )


def test_build_messages_states_the_word_limit(sources):
    system, user = build_messages(sources, 83)
    assert ("83 words" in system["content"], "83 words" in user["content"][-1]["text"]) == (True, True)


def test_build_messages_refuses_a_template_that_drops_an_image(sources):
    broken = {**sources, PROMPTS[1]: "Source: {{ source_image }} ({{ word_limit }} words)"}
    with pytest.raises(PipelineConfigError, match="target_image"):
        build_messages(broken, 70)


def test_rendered_messages_for_fixture_pair_match_snapshot():
    assert_prompt_snapshot(Describe, DescribeConfig(mode="vlm"), "pair.json", "describe_messages.txt")


# --- prompt_batch / parse_batch (images from the run's image store) -----------------------------------


@pytest.fixture
def pair_table(tmp_path):
    store = ImageStore.from_uri(str(tmp_path / "run"))
    red = store.put(png((200, 30, 40)), "png", 60, 40)
    blue = store.put(png((20, 30, 200), (40, 40)), "png", 40, 40)
    broken = store.put(b"\x89PNG\r\n\x1a\nnot really a png", "png", 10, 10)
    table = pa.table({
        "id": ["a~b", "a~none", "a~broken"],
        "query_image": pa.array([red, red, red], IMAGE_REF),
        "target_image": pa.array([blue, None, broken], IMAGE_REF),
    })
    return table, str(tmp_path / "run")


def test_prompt_batch_sends_source_then_target_as_data_urls(sources, pair_table):
    table, uri = pair_table
    out = prompt_batch(table, sources, to_dict(DescribeConfig(mode="vlm")), uri)
    parts = json.loads(out[MESSAGES][0].as_py())[1]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    sizes = [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).size for u in urls]
    assert sizes == [(60, 40), (40, 40)]


def test_prompt_batch_marks_missing_and_unreadable_images_and_asks_nothing_for_them(sources, pair_table):
    table, uri = pair_table
    out = prompt_batch(table, sources, to_dict(DescribeConfig(mode="vlm")), uri)
    assert (out[IMAGE_ERROR].to_pylist(), [m is None for m in out[MESSAGES].to_pylist()]) == (
        ["", "error:no_target_image", "error:image_not_an_image"], [False, True, True],
    )


def test_prompt_batch_shrinks_images_to_max_image_side(sources, tmp_path):
    uri = str(tmp_path / "run")
    big = ImageStore.from_uri(uri).put(png((9, 9, 9), (400, 100)), "png", 400, 100)
    table = pa.table({"id": ["x"], "query_image": pa.array([big], IMAGE_REF), "target_image": pa.array([big], IMAGE_REF)})
    out = prompt_batch(table, sources, to_dict(DescribeConfig(mode="vlm", max_image_side=200)), uri)
    url = next(p for p in json.loads(out[MESSAGES][0].as_py())[1]["content"] if p["type"] == "image_url")
    assert Image.open(io.BytesIO(base64.b64decode(url["image_url"]["url"].split(",", 1)[1]))).size == (200, 50)


def test_prompt_batch_records_the_drawn_word_limit(sources, pair_table):
    table, uri = pair_table
    cfg = DescribeConfig(mode="vlm", seed=3)
    out = prompt_batch(table, sources, to_dict(cfg), uri)
    assert out["word_limit"].to_pylist() == [draw_word_limit(3, i, 60, 100) for i in table["id"].to_pylist()]


def test_parse_batch_sets_columns_and_reasons_image_errors_first():
    table = pa.table({
        "id": ["good", "off", "cut", "img"],
        "word_limit": pa.array([70, 70, 70, 70], pa.int32()),
        MESSAGES: ["[]", "[]", "[]", None],
        RAW: [GOOD, "a dog", "Both images", ""],
        LLM_ERROR: ["", "", "error:truncated_output", "error:image_missing"],
        IMAGE_ERROR: ["", "", "", "error:image_unreadable"],
    })
    out = parse_batch(table, to_dict(DescribeConfig(mode="vlm")))
    assert (
        out[REASON].to_pylist(), out["description"].to_pylist()[0], out["description_mode"].to_pylist(),
        out["describe_raw"].to_pylist()[1], [c for c in out.column_names if c in (MESSAGES, RAW, IMAGE_ERROR)],
    ) == (
        ["", "filter:off_template", "error:truncated_output", "error:image_unreadable"], GOOD, ["vlm"] * 4,
        "a dog", [],
    )


# --- captions mode --------------------------------------------------------------------------------------


def captions_table(src, tgt, views) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(len(src))], "query_caption": pa.array(src, pa.string()),
                     "target_caption": pa.array(tgt, pa.string()), "pair_views": pa.array(views, pa.list_(pa.string()))})


def test_captions_mode_renders_both_captions_and_the_views(sources):
    out = captions_batch(captions_table(["A dog on a sofa."], ["A dog on a beach."], [["clip_image", "dino"]]), sources)
    assert out["description"][0].as_py() == (
        "Source Image caption: A dog on a sofa.\nTarget Image caption: A dog on a beach.\n"
        "The images were paired as similar by: clip_image, dino."
    )


def test_captions_mode_says_when_one_caption_is_missing(sources):
    out = captions_batch(captions_table([None], ["A dog on a beach."], [["dino"]]), sources)
    assert (out[STATUS][0].as_py(), "Source Image caption: (no caption)" in out["description"][0].as_py()) == (
        "ok", True,
    )


def test_captions_mode_filters_a_pair_without_any_caption(sources):
    out = captions_batch(captions_table([None, " "], ["", None], [["dino"], []]), sources)
    assert out[REASON].to_pylist() == ["filter:no_caption", "filter:no_caption"]


def test_captions_mode_has_null_word_limit_and_raw(sources):
    out = captions_batch(captions_table(["a"], ["b"], [[]]), sources)
    assert (out["word_limit"].type, out["word_limit"][0].as_py(), out["describe_raw"][0].as_py(),
            out["description_mode"][0].as_py()) == (pa.int32(), None, None, "captions")


# --- the transformers VLM backend on a tiny random Qwen2-VL ------------------------------------------


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from pipeline.models.tiny import build_tiny_qwen2_vl
    from pipeline.models.vlm import HFVisionChat

    path = build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny") / "qwen2_vl")
    cfg = LLMConfig(model="tiny:qwen2_vl", max_new_tokens=8)
    return HFVisionChat(str(path), cfg), cfg


def test_transformers_vlm_generates_for_two_image_prompts_and_skips_image_errors(sources, pair_table, tiny_vlm):
    from pipeline.config import to_dict
    from pipeline.models.vlm import HFVisionGenerateFn

    engine, cfg = tiny_vlm
    table, uri = pair_table
    config = to_dict(DescribeConfig(mode="vlm"))
    out = parse_batch(HFVisionGenerateFn.from_engine(engine, cfg, 2)(prompt_batch(table, sources, config, uri)), config)
    # A random model writes no template: the first row reaches the model and comes back with raw text.
    assert (
        bool(out["describe_raw"][0].as_py()), out[REASON].to_pylist()[0] in ("filter:off_template", "error:truncated_output",
                                                                            "filter:empty_description"),
        out[REASON].to_pylist()[1:], out["describe_raw"].to_pylist()[1:],
    ) == (True, True, ["error:no_target_image", "error:image_not_an_image"], ["", ""])


def test_transformers_vlm_feeds_both_images_to_the_model(tiny_vlm):
    from pipeline.models.vllm_vision import data_url
    from pipeline.models.vlm import split_images

    engine, _ = tiny_vlm
    urls = [data_url(png((200, 30, 40))), data_url(png((20, 30, 200), (40, 40)))]
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": urls[0]}}, {"type": "text", "text": "and"},
        {"type": "image_url", "image_url": {"url": urls[1]}},
    ]}]
    plain, images = split_images(messages)
    text = engine.processor.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    enc = engine.processor(text=[text], images=images, return_tensors="pt")
    assert ([im.size for im in images], enc["image_grid_thw"].shape[0]) == ([(60, 40), (40, 40)], 2)


def test_transformers_vlm_rejects_a_prompt_over_max_input_tokens(tiny_vlm):
    import dataclasses

    from pipeline.models.vllm_vision import data_url
    from pipeline.models.vlm import HFVisionChat

    engine, cfg = tiny_vlm
    short = HFVisionChat.__new__(HFVisionChat)
    short.__dict__.update(engine.__dict__)
    short.cfg = dataclasses.replace(cfg, max_input_tokens=10)
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png((1, 2, 3)))}},
                                             {"type": "text", "text": "Describe."}]}]
    assert short.generate([messages, None], 2) == [("", "error:prompt_too_long"), ("", "")]


def test_captions_mode_stage_is_one_task_step_without_a_model(tmp_path):
    from types import SimpleNamespace

    stage = Describe(DescribeConfig(), SimpleNamespace(prompts_dir=default_prompts_dir(), cache_dir=tmp_path))
    stage.prepare()
    steps = stage.task_steps()
    assert ([s.fn for s in steps], stage.models()) == ([captions_batch], {})


def test_vlm_mode_stage_runs_as_operators_and_names_its_model(tmp_path):
    from types import SimpleNamespace

    stage = Describe(DescribeConfig(mode="vlm", vlm=LLMConfig(model="/models/qwen2-vl")),
                     SimpleNamespace(prompts_dir=default_prompts_dir(), cache_dir=tmp_path))
    stage.prepare()
    assert (stage.task_steps(), stage.models()) == (None, {"vlm": "/models/qwen2-vl via transformers"})


def test_openai_backend_request_carries_both_images_in_order_and_no_grammar(sources, pair_table, monkeypatch):
    from dataclasses import asdict

    from pipeline.models.openai_chat import OpenAIChatFn
    from tests.support.openai_server import OpenAIServer, ok

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    table, uri = pair_table
    config = to_dict(DescribeConfig(mode="vlm"))
    with OpenAIServer() as server:
        server.script(ok(GOOD))
        llm = LLMConfig(backend="openai", model="served-vlm", base_url=server.base_url, guided=False)
        fn = OpenAIChatFn(asdict(llm), {}, api_key=None)
        try:
            out = parse_batch(fn(prompt_batch(table, sources, config, uri)), config)
        finally:
            fn.close()
        body = server.requests[0].body
    parts = body["messages"][1]["content"]
    kinds = [p["type"] for p in parts]
    assert (len(server.requests), kinds, "response_format" in body, out["description"][0].as_py()) == (
        1, ["text", "image_url", "text", "image_url", "text"], False, GOOD,
    )


def test_captions_mode_fingerprint_ignores_the_vlm_settings():
    a = DescribeConfig(vlm=LLMConfig(model="/models/a"), min_words=10, max_words=20, seed=4).semantic_dict()
    b = DescribeConfig().semantic_dict()
    vlm_a = DescribeConfig(mode="vlm", vlm=LLMConfig(model="/models/a")).semantic_dict()
    assert (a == b, vlm_a == DescribeConfig(mode="vlm").semantic_dict()) == (True, False)
