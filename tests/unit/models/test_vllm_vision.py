"""pipeline/models/vllm_vision.py: the engine's requests (the prompt `LLM.chat` would render, the images
decoded as vLLM decodes a data URL); rows without a usable image send a one-token stand-in and are
restored with their reason (no Ray, no vllm; the tiny Qwen2-VL's processor renders the prompts)."""

from __future__ import annotations

import base64
import io
import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.models.llm import LLM_ERROR, MESSAGES, RAW
from pipeline.models.vllm_backend import CARRY
from pipeline.models.vllm_vision import (
    STAND_IN,
    EngineImage,
    attach_image,
    data_url,
    engine_image,
    for_engine,
    image_bytes,
    part_image,
    split_images,
    stored_image,
    url_bytes,
    vision_restore_row,
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


@pytest.mark.parametrize(("fmt", "mode"), [("BMP", "RGB"), ("WEBP", "RGB"), ("PNG", "RGBA"), ("JPEG", "CMYK")])
def test_preprocess_sends_any_allowed_image_decoded_once_as_every_model_sees_it(encode_image, vl_model, fmt, mode):
    """The engine gets io/images.decode_image's RGB pixels (what CLIP and GME see), not a re-encoded copy
    (a JPEG made of a noise WebP or CMYK JPEG would not keep these pixels)."""
    import numpy as np
    from PIL import Image

    from pipeline.io.images import decode_image

    noise = np.random.RandomState(1).randint(0, 255, (24, 32, 4), dtype=np.uint8)
    data = encode_image(Image.fromarray(noise, "RGBA").convert(mode), fmt)
    row = {"id": "a", MESSAGES: MESSAGES_JSON, "image": {"bytes": data, "path": None}}
    [image] = _arrived(vlm_preprocess_row(row, {}, "image", None, vl_model)["multimodal_data"]["image"])
    assert (image.mode, image.tobytes()) == ("RGB", decode_image(data).tobytes())


@pytest.mark.parametrize("data", [b"plain text", b"%!PS-Adobe-3.0 EPSF-3.0\n", b"II*\x00\x08\x00\x00\x00"])
def test_data_url_refuses_bytes_that_are_not_an_allowed_format(data):
    with pytest.raises(ValueError, match="not an allowed image format"):
        data_url(data)


def test_an_eps_in_the_image_column_is_refused_before_any_decoder_sees_it():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    pre = vlm_preprocess_row({"id": "a", MESSAGES: MESSAGES_JSON, "image": eps}, {}, "image", None, "/none")
    assert pre["prompt"] == STAND_IN
    assert _restored(pre, **{RAW: "x", "num_generated_tokens": 1})[LLM_ERROR] == "error:image_format_not_allowed"


def test_image_goes_before_the_text_of_the_last_user_message():
    messages = json.loads(MESSAGES_JSON)
    out = attach_image(messages, "data:image/png;base64,AAAA")
    assert out[0] == messages[0] and out[1]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "What is this?"},
    ]
    assert messages[1]["content"] == "What is this?"


@pytest.fixture(scope="module")
def vl_model(tiny_cache) -> str:
    return str(tiny_cache / "tiny" / "qwen2_vl")


def _arrived(images: list) -> list:
    """The images the engine's process gets: the request's, unpickled (Ray Data pickles a block's objects)."""
    return pickle.loads(pickle.dumps(images))


def _restored(request: dict, **engine_row) -> dict:
    """What the restore map makes of a request once the engine answered with `engine_row`."""
    return vision_restore_row({CARRY: request[CARRY], **engine_row}, max_new_tokens=8, max_input_tokens=512)


def test_preprocess_sends_the_rendered_prompt_and_the_decoded_image(image_bytes, vl_model):
    from PIL import Image

    png = image_bytes("PNG")
    row = {"id": "a", MESSAGES: MESSAGES_JSON, "image": {"bytes": png, "path": None}}
    pre = vlm_preprocess_row(row, {"max_tokens": 4}, "image", None, vl_model)
    # The template writes the image placeholder where the image part is, before the question (the
    # "openai" content format vLLM's chat parser picks for a template that reads typed parts).
    assert pre["prompt"] == (
        "<|im_start|>system\nDescribe.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n<|im_start|>assistant\n"
    )
    [image] = _arrived(pre["multimodal_data"]["image"])
    assert (image.mode, image.tobytes()) == ("RGB", Image.open(io.BytesIO(png)).convert("RGB").tobytes())
    assert (pre["sampling_params"], pickle.loads(pre[CARRY])["id"]) == ({"max_tokens": 4}, "a")
    assert _restored(pre, **{RAW: "a cat", "num_generated_tokens": 2}) | {"image": None} == {
        "id": "a", "image": None, RAW: "a cat", LLM_ERROR: "",
    }


def test_preprocess_resolves_image_references_with_the_given_loader(image_bytes, vl_model):
    store = {"sha256:1": image_bytes("PNG")}
    row = {"id": "a", MESSAGES: MESSAGES_JSON, "image": "sha256:1"}
    pre = vlm_preprocess_row(row, {}, "image", store.get, vl_model)
    assert len(pre["multimodal_data"]["image"]) == 1 and pre["prompt"] != STAND_IN


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "error:image_missing"),
        ({"bytes": None, "path": None}, "error:image_missing"),
        (b"not an image", "error:image_not_an_image"),
        ("cut", "error:image_not_an_image"),  # the fixture PNG is tiny: half of it ends inside its header
    ],
)
def test_row_without_a_usable_image_sends_a_stand_in_and_is_restored_with_its_reason(value, reason, image_bytes):
    if value == "cut":  # a real PNG cut in half: PIL identifies it from its header alone
        whole = image_bytes("PNG")
        value = {"bytes": whole[: len(whole) // 2], "path": None}
    sampling = {"max_tokens": 64, "structured_outputs": {"json": "{}"}}
    pre = vlm_preprocess_row({"id": "a", MESSAGES: MESSAGES_JSON, "image": value}, sampling, "image", None, "/none")
    assert (pre["prompt"], pre["multimodal_data"], pre["sampling_params"]) == (
        STAND_IN, None, {"max_tokens": 1, "structured_outputs": None},
    )
    # Whatever the engine made of the stand-in (an answer or an error) is dropped.
    for engine_row in ({RAW: "x", "num_generated_tokens": 1}, {"__inference_error__": "boom"}):
        restored = _restored(pre, **engine_row)
        assert (restored["id"], restored[RAW], restored[LLM_ERROR]) == ("a", "", reason)


def test_engine_outcomes_keep_the_backend_reasons(image_bytes, vl_model):
    row = {"id": "a", MESSAGES: MESSAGES_JSON, "image": image_bytes("PNG")}
    pre = vlm_preprocess_row(row, {}, "image", None, vl_model)
    assert [
        _restored(pre, **r)[LLM_ERROR]
        for r in (
            {RAW: "abc", "num_generated_tokens": 8},
            {"__inference_error__": "ValueError: prompt is longer than the maximum model length"},
            {"__inference_error__": "RuntimeError: boom"},
        )
    ] == ["error:truncated_output", "error:prompt_too_long", "error:inference_failed"]


def test_preprocess_without_an_image_column_decodes_the_messages_images_in_order(image_bytes, vl_model):
    from PIL import Image

    first, second = (data_url(image_bytes("PNG", color=c)) for c in ((250, 0, 0), (0, 0, 250)))
    parts = [{"type": "image_url", "image_url": {"url": first}},
             {"type": "image_url", "image_url": {"url": second}}, {"type": "text", "text": "?"}]
    pre = vlm_preprocess_row({"id": "a", MESSAGES: json.dumps([{"role": "user", "content": parts}])}, {}, None,
                             None, vl_model)
    assert pre["prompt"].count("<|image_pad|>") == 2
    images = _arrived(pre["multimodal_data"]["image"])
    assert [im.getpixel((0, 0)) for im in images] == [(250, 0, 0), (0, 0, 250)]
    skipped = vlm_preprocess_row({"id": "b", MESSAGES: None}, {}, None, None, vl_model)
    assert (skipped["prompt"], _restored(skipped)[LLM_ERROR]) == (STAND_IN, "error:image_missing")
    assert all(isinstance(im, Image.Image) for im in images)


def test_split_images_puts_typed_placeholders_where_the_image_parts_were(image_bytes):
    url = data_url(image_bytes("PNG"))
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image_url", "image_url": {"url": url}}]}]
    conversation, images = split_images(messages)
    assert conversation == [messages[0], {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image"}]}]
    assert len(images) == 1 and messages[1]["content"][1]["type"] == "image_url"


@pytest.mark.parametrize("url", ["https://example.com/a.png", "data:image/png,AAAA", "data:image/png;base64,A?A"])
def test_only_base64_data_urls_are_image_sources(url):
    with pytest.raises(ValueError):
        url_bytes(url)


def test_engine_image_is_what_vllm_makes_of_the_bytes():
    """vLLM's ImageMediaIO (RGB): transparency composited on white, other modes converted, EXIF applied."""
    from PIL import Image

    def encoded(image, **kw) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG", **kw)
        return buf.getvalue()

    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    grey_trns = Image.new("L", (4, 4), 7)
    assert engine_image(encoded(clear)).getpixel((0, 0)) == (255, 255, 255)
    assert engine_image(encoded(grey_trns, transparency=7)).getpixel((0, 0)) == (255, 255, 255)
    assert engine_image(encoded(Image.new("L", (4, 4), 7))).getpixel((0, 0)) == (7, 7, 7)
    with pytest.raises(ValueError):
        engine_image(b"not an image")


# --- the image handoff (EngineImage) ---------------------------------------------------------------


def _picture(seed: int, size: tuple[int, int], noise: bool, mode: str, fmt: str) -> bytes:
    """A smooth picture (a photo's compressible gradients) or noise, as `fmt` bytes."""
    import numpy as np
    from PIL import Image

    w, h = size
    if noise:
        pixels = np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        y, x = np.mgrid[0:h, 0:w]
        pixels = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), (x + y + seed) % 256], -1)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").convert(mode).save(buf, format=fmt)
    return buf.getvalue()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 1000),
    size=st.tuples(st.integers(1, 96), st.integers(1, 96)),
    noise=st.booleans(),
    mode_fmt=st.sampled_from([("RGB", "PNG"), ("RGB", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("RGB", "WEBP"),
                              ("P", "GIF"), ("RGB", "BMP"), ("CMYK", "JPEG")]),
)
def test_what_the_engine_unpickles_is_exactly_the_decoded_image_and_never_more_bytes(seed, size, noise, mode_fmt):
    """The fast path (the encoded file, decoded again in the engine's process) gives the slow truth's
    pixels (the image decoded in the row map), for both decoders, and travels in the smaller form."""
    data = _picture(seed, size, noise, *mode_fmt)
    for decode, sent in ((stored_image, None), (engine_image, part_image(data))):
        truth = decode(data)
        sent = for_engine(truth, data, decode) if sent is None else sent
        arrived = pickle.loads(pickle.dumps(sent))
        assert (arrived.mode, arrived.size, arrived.tobytes()) == (truth.mode, truth.size, truth.tobytes())
        pixels = truth.width * truth.height * len(truth.getbands())
        assert isinstance(sent, EngineImage) == (len(data) < pixels)
        assert len(pickle.dumps(sent)) <= min(len(data), pixels) + 1024


def test_a_photo_travels_as_its_file_and_noise_as_its_pixels():
    photo, noise = _picture(1, (224, 224), False, "RGB", "JPEG"), _picture(1, (224, 224), True, "RGB", "PNG")
    sent_photo, sent_noise = (for_engine(stored_image(d), d, stored_image) for d in (photo, noise))
    assert isinstance(sent_photo, EngineImage) and len(pickle.dumps(sent_photo)) < 224 * 224 * 3 // 5
    assert not isinstance(sent_noise, EngineImage)


def test_an_image_part_that_is_not_an_allowed_image_fails_in_the_row_map():
    with pytest.raises(ValueError, match="not an allowed image"):
        part_image(b"%!PS-Adobe-3.0 EPSF-3.0\n")
