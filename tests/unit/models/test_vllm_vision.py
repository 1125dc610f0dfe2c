"""pipeline/models/vllm_vision.py: images become data-URL parts of the last user message; rows without
a usable image are marked and restored with their reason (pure functions, no Ray, no vllm)."""

from __future__ import annotations

import base64
import json
import pickle

import pytest

from pipeline.models.llm import LLM_ERROR, MESSAGES, RAW
from pipeline.models.vllm_backend import CARRY
from pipeline.models.vllm_vision import (
    HAS_IMAGE,
    attach_image,
    data_url,
    image_bytes,
    missing_image_row,
    vlm_preprocess_row,
)

MESSAGES_JSON = json.dumps(
    [
        {"role": "system", "content": "Describe."},
        {"role": "user", "content": "What is this?"},
    ]
)


def test_image_bytes_reads_hf_structs_and_raw_bytes_and_nothing_else(encode_image):
    from PIL import Image

    png = encode_image(Image.new("RGB", (8, 8)), "PNG")
    assert [image_bytes(v) for v in ({"bytes": png, "path": None}, png, {"bytes": None}, None, b"")] == [
        png,
        png,
        None,
        None,
        None,
    ]


def test_data_url_names_the_format_and_holds_the_bytes(image_bytes):
    jpeg = image_bytes("JPEG")
    url = data_url(jpeg)
    assert url.startswith("data:image/jpeg;base64,") and base64.b64decode(url.split(",", 1)[1]) == jpeg


def test_data_url_reencodes_formats_a_processor_may_not_read_as_png(image_bytes):
    assert data_url(image_bytes("TIFF")).startswith("data:image/png;base64,")


def test_data_url_refuses_bytes_that_are_not_an_image():
    with pytest.raises(ValueError, match="not an image"):
        data_url(b"plain text")


def test_image_goes_before_the_text_of_the_last_user_message():
    messages = json.loads(MESSAGES_JSON)
    out = attach_image(messages, "data:image/png;base64,AAAA")
    assert out[0] == messages[0] and out[1]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "What is this?"},
    ]
    assert messages[1]["content"] == "What is this?"


def test_preprocess_attaches_the_row_image_and_carries_the_other_columns(image_bytes):
    row = {"id": "a", MESSAGES: MESSAGES_JSON, "image": {"bytes": image_bytes("PNG"), "path": None}}
    pre = vlm_preprocess_row(row, {"max_tokens": 4}, "image", None)
    assert (pre[HAS_IMAGE], pre["messages"][1]["content"][0]["type"]) == (True, "image_url")
    assert pickle.loads(pre[CARRY])["id"] == "a"


def test_preprocess_resolves_image_references_with_the_given_loader(image_bytes):
    store = {"sha256:1": image_bytes("PNG")}
    row = {"id": "a", MESSAGES: MESSAGES_JSON, "image": "sha256:1"}
    pre = vlm_preprocess_row(row, {}, "image", store.get)
    assert pre[HAS_IMAGE] is True


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "error:image_missing"),
        ({"bytes": None, "path": None}, "error:image_missing"),
        (b"not an image", "error:image_unreadable"),
        ("cut", "error:image_unreadable"),
    ],
)
def test_row_without_a_usable_image_is_restored_with_its_reason(value, reason, image_bytes):
    if value == "cut":  # a real PNG cut in half: PIL identifies it from its header alone
        whole = image_bytes("PNG")
        value = {"bytes": whole[: len(whole) // 2], "path": None}
    pre = vlm_preprocess_row({"id": "a", MESSAGES: MESSAGES_JSON, "image": value}, {}, "image", None)
    assert pre[HAS_IMAGE] is False
    restored = missing_image_row(pre)
    assert (restored["id"], restored[RAW], restored[LLM_ERROR]) == ("a", "", reason)


def test_preprocess_without_an_image_column_sends_the_messages_images_as_they_are():
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,BBBB"}}, {"type": "text", "text": "?"}]
    messages = [{"role": "user", "content": parts}]
    pre = vlm_preprocess_row({"id": "a", MESSAGES: json.dumps(messages)}, {}, None, None)
    skipped = vlm_preprocess_row({"id": "b", MESSAGES: None}, {}, None, None)
    assert (pre["messages"], pre[HAS_IMAGE], skipped[HAS_IMAGE], pickle.loads(skipped[CARRY])["id"]) == (
        messages, True, False, "b",
    )
