"""pipeline/models/vllm_vision.py: images become data-URL parts of the last user message; rows without
a usable image are marked and restored with their reason (pure functions, no Ray, no vllm)."""

from __future__ import annotations

import base64
import io
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
    model_image,
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


@pytest.mark.parametrize(
    ("fmt", "mode", "mime"),
    [("BMP", "RGB", "png"), ("WEBP", "RGB", "jpeg"), ("PNG", "RGBA", "png"), ("JPEG", "CMYK", "jpeg")],
)
def test_model_image_sends_what_is_not_plain_jpeg_or_png_as_rgb(image_bytes, fmt, mode, mime):
    from PIL import Image

    url = data_url(model_image(image_bytes(fmt, mode)))
    assert url.startswith(f"data:image/{mime};base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).mode == "RGB"


@pytest.mark.parametrize("data", [b"plain text", b"%!PS-Adobe-3.0 EPSF-3.0\n", b"II*\x00\x08\x00\x00\x00"])
def test_data_url_refuses_bytes_that_are_not_an_allowed_format(data):
    with pytest.raises(ValueError, match="not an allowed image format"):
        data_url(data)


def test_model_image_refuses_an_eps_before_any_decoder_sees_it():
    from pipeline.io.images import ImageError

    with pytest.raises(ImageError) as err:
        model_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    assert err.value.kind == "format_not_allowed"


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
        (b"not an image", "error:image_not_an_image"),
        ("cut", "error:image_not_an_image"),  # the fixture PNG is tiny: half of it ends inside its header
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
