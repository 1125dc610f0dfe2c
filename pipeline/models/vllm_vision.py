"""Vision-language prompts through vLLM: text plus the row's image to a Qwen2-VL class model.

Rows carry `_messages` (JSON chat messages, text only, as for the text backends) and an image column
holding an HF image struct `{bytes, path}` or raw bytes; a reference into the run's image store is
resolved by the `load_image` callable the caller passes (it runs in the worker). With
`image_column=None` the images are already OpenAI-style `image_url` parts (data URLs) of `_messages`
(several per prompt, up to `max_images`, e.g. models/vlm.py's two-image prompts).

The row map before the engine does what `LLM.chat` does with such messages, once per row: it takes
each image (a column's image decoded with io/images.decode_image, the RGB image every model of the run
sees; an image part as vLLM decodes a data URL, `engine_image`), puts the typed placeholder
`{"type": "image"}` before the last user message's text and renders the model's chat template
(`render_prompt`, the processor's template, as vLLM picks it). The engine gets the prompt string and
the images (`multimodal_data`), each travelling through Ray's object store as the smaller of its pixels
and its encoded file (`EngineImage`: decoded when the engine's process unpickles it). The engine is the
processor's only stage (no prepare-multimodal, chat-template, tokenize or detokenize actors; vLLM's own
text is kept). Answers are exactly raw `LLM.chat`'s on the same conversations
(tests/vllm/test_vllm_vision.py); docs/benchmarks.md has what this saved.
Output as for text: `_raw` / `_llm_error` with the fixed reasons of models/vllm_backend.py; a row
without an image (or with a null `_messages`) is `error:image_missing`, one whose bytes are not a valid
image `error:image_<kind>` (io/images); such a row sends the engine a one-token stand-in whose answer is
dropped (a failing `load_image`, e.g. storage, propagates: the shard is redone).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import io
import json
import os
import pickle
from collections.abc import Callable
from functools import partial
from typing import Any

from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW, LLMConfig
from pipeline.models.vllm_backend import (
    CARRY,
    check_engine_fits,
    row_map_kwargs,
    row_outcome,
    vllm_postprocess_row,
    vllm_processor_config,
    vllm_sampling_params,
)

IMAGE_MISSING = "error:image_missing"
# Carried by a row that has no usable image: its reason. Such a row sends a one-token stand-in prompt
# (the processor cannot let a row bypass the engine, and a second branch of the lazy plan would run
# everything before it twice) and its answer is dropped.
IMAGE_REASON, STAND_IN = "_image_reason", "."
_MIME = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
}


def image_bytes(value: Any) -> bytes | None:
    """The encoded image in an image-column value (HF struct or raw bytes); None when there is none."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, memoryview)) and len(value):
        return bytes(value)
    return None


def data_url(data: bytes) -> str:
    """`data:<mime>;base64,...` for image bytes the loader made or checked (io/images.fit_image); the magic bytes
    must name an allowed format (io/images.sniff_format), so nothing else reaches the engine's decoder.

    Raises:
        ValueError: the bytes do not start as an allowed image format.
    """
    from pipeline.io.images import sniff_format

    fmt = sniff_format(data)
    if fmt is None:
        raise ValueError(f"not an allowed image format: first bytes {data[:8]!r}")
    return f"data:{_MIME[fmt]};base64,{base64.b64encode(data).decode('ascii')}"


def attach_image(messages: list[dict], url: str | None = None) -> list[dict]:
    """The messages with an image put before the text of the last user message: an `image_url` part
    holding `url`, or with `url` None the typed placeholder `{"type": "image"}` (the image itself then
    goes to the engine beside the prompt)."""
    out = [dict(m) for m in messages]
    last = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=None)
    if last is None:
        raise ValueError("no user message to attach the image to")
    content = out[last]["content"]
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    image = {"type": "image"} if url is None else {"type": "image_url", "image_url": {"url": url}}
    out[last]["content"] = [image, *parts]
    return out


def engine_image(data: bytes) -> Any:
    """The PIL image vLLM makes of a data URL holding `data` (vllm/multimodal/media/image.py,
    `ImageMediaIO(image_mode="RGB").load_bytes`): EXIF orientation applied, then RGB, transparency
    composited on white. Done here so the engine gets the decoded image and no data URL is built,
    copied and decoded again on the way (for image parts of `_messages`, e.g. models/vlm.py's).

    Raises:
        ValueError: the bytes are not an allowed image format.
    """
    from PIL import Image, ImageOps

    from pipeline.io.images import ALLOWED_FORMATS

    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        with contextlib.suppress(Exception):
            image = ImageOps.exif_transpose(image)
        image.load()
    except (OSError, Image.UnidentifiedImageError) as exc:
        raise ValueError(f"not an allowed image: {type(exc).__name__}: {exc}") from None
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.split()[3])
        return rgb
    return image.convert("RGB")


def url_bytes(url: str) -> bytes:
    """The bytes of a `data:<mime>;base64,...` URL (the only image URLs prompts here hold).

    Raises:
        ValueError: not a base64 data URL.
    """
    head, sep, body = url.partition(",")
    if not (sep and head.startswith("data:") and head.endswith(";base64")):
        raise ValueError(f"not a base64 data URL: {url[:40]!r}")
    return base64.b64decode(body, validate=True)


def split_images(messages: list[dict]) -> tuple[list[dict], list[Any]]:
    """(the messages with every `image_url` part replaced by an `{"type": "image"}` placeholder, the
    images in prompt order, each as the engine will get it: `for_engine` of vLLM's own decode,
    `engine_image`): what vLLM's chat parser makes of OpenAI-style messages for a template that reads
    typed parts (Qwen2-VL's: vLLM detects the "openai" content format).

    Raises:
        ValueError: an image part that is not a base64 data URL of an allowed image.
    """
    out, images = [], []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image_url":
                    images.append(part_image(url_bytes(part["image_url"]["url"])))
                    parts.append({"type": "image"})
                else:
                    parts.append(part)
            message = {**message, "content": parts}
        out.append(message)
    return out, images


# --- the image handoff -----------------------------------------------------------------------------
# Ray Data moves the engine's requests through the object store in blocks and pickles their Python
# objects: a decoded image crosses as its pixels (3 bytes a pixel), where its encoded file is usually
# several times smaller (a 224 px photo JPEG: 17 KB against 150 KB). So an image travels as the smaller of
# its two forms; in the encoded form it is decoded again when the engine's process unpickles the block, by
# the same function that made the pixels the row map checked. The price is that second decode (0.36 ms
# for that JPEG); what it buys is a block ~9x smaller, so a 512 MB object store holds ~9x more requests
# before Ray Data holds back the row map or spills (docs/benchmarks.md, session 6).


class EngineImage:
    """An image on its way to the engine as its encoded bytes: unpickled, it *is* the RGB PIL image
    `decode(data, *args)` (a module-level function, pickled by reference) makes. Never handed to vLLM
    itself: only its unpickled form reaches the engine (Ray Data pickles every Python object of a block)."""

    __slots__ = ("args", "data", "decode")

    def __init__(self, decode: Callable[..., Any], data: bytes, *args: Any) -> None:
        self.decode, self.data, self.args = decode, data, args

    def __reduce__(self) -> tuple:
        return self.decode, (self.data, *self.args)


def smaller_encoded(data: bytes, width: int, height: int, bands: int = 3) -> bool:
    """Whether the encoded bytes are smaller than the pixels of a `width` x `height` image."""
    return len(data) < width * height * bands


def for_engine(image: Any, data: bytes, decode: Callable[..., Any], *args: Any) -> Any:
    """`image` (decoded: `decode(data, *args)` made it), or an `EngineImage` of `data` when the encoded
    bytes are smaller than the pixels (the form the engine gets is the same image either way)."""
    if smaller_encoded(data, image.width, image.height, len(image.getbands())):
        return EngineImage(decode, data, *args)
    return image


def stored_image(data: bytes) -> Any:
    """The RGB image every model of the run sees (io/images.decode_image with the store's limits)."""
    from pipeline.io.images import STORED_LIMITS, decode_image

    return decode_image(data, STORED_LIMITS)


def part_image(data: bytes) -> Any:
    """An image part's image as the engine will get it: `for_engine` of `engine_image`. When the encoded
    form travels, only the header is read here (the size; an unknown format fails here, as vLLM's decode
    would); the pixels are decoded once, in the engine's process, as `LLM.chat` decodes a data URL.

    Raises:
        ValueError: the bytes are not an allowed image format.
    """
    from PIL import Image

    from pipeline.io.images import ALLOWED_FORMATS

    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as header:
            encoded = smaller_encoded(data, header.width, header.height)  # engine_image is RGB
    except (OSError, Image.UnidentifiedImageError) as exc:
        raise ValueError(f"not an allowed image: {type(exc).__name__}: {exc}") from None
    return EngineImage(engine_image, data) if encoded else engine_image(data)


@functools.lru_cache(maxsize=2)
def chat_processor(model_path: str) -> Any:
    """The model's `AutoProcessor` (its chat template is the one vLLM's `LLM.chat` applies: the
    processor's first, the tokenizer's otherwise), loaded once per worker process."""
    import time

    from transformers import AutoProcessor

    from pipeline.logging import get_logger

    start = time.perf_counter()
    processor = AutoProcessor.from_pretrained(model_path)
    get_logger(__name__).info("chat template of %s loaded in %.1f s (pid %d)", model_path,
                              time.perf_counter() - start, os.getpid())
    return processor


def render_prompt(messages: list[dict], model_path: str) -> str:
    """The prompt string `LLM.chat` renders for `messages` (placeholders already in): the chat template,
    with the generation prompt opened when the last message is the user's."""
    add = messages[-1]["role"] == "user"
    return chat_processor(model_path).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add, continue_final_message=not add
    )


def vlm_preprocess_row(
    row: dict, sampling: dict, image_column: str | None, load_image: Callable | None, model_path: str
) -> dict:
    """The engine's request for a row: the rendered prompt and its decoded images, or, for a row without
    a usable image, a one-token stand-in and the reason (restored by `vision_restore_row`)."""
    carry = {k: v for k, v in row.items() if k != MESSAGES}
    messages, images, reason = None, None, IMAGE_MISSING
    if image_column is None:
        messages = json.loads(row[MESSAGES]) if row.get(MESSAGES) is not None else None
    else:
        from pipeline.io.images import ImageError

        value = row.get(image_column)
        # A failing read in `load_image` propagates (R35); bytes that are not a valid image skip the engine.
        data = load_image(value) if load_image is not None and value is not None else image_bytes(value)
        if data:
            try:
                # The RGB image every model of the run sees (io/images.decode_image: allowed formats, pixel
                # cap, first frame, EXIF orientation, RGB), never encoded again: it goes as these pixels or
                # as `data`, decoded by the same function in the engine's process (`for_engine`).
                image = stored_image(data)
            except ImageError as exc:
                reason = f"error:image_{exc.kind}"
            else:
                messages, images = attach_image(json.loads(row[MESSAGES])), [for_engine(image, data, stored_image)]
    if messages is None:
        carry[IMAGE_REASON] = reason
        params = {**sampling, "max_tokens": 1}
        if "structured_outputs" in params:
            params["structured_outputs"] = None
        return {"prompt": STAND_IN, "multimodal_data": None, "sampling_params": params, CARRY: pickle.dumps(carry)}
    if images is None:  # image parts of `_messages` (data URLs), decoded as vLLM decodes them (`part_image`)
        messages, images = split_images(messages)
    return {
        "prompt": render_prompt(messages, model_path),
        "multimodal_data": {"image": images} if images else None,
        "sampling_params": dict(sampling),
        CARRY: pickle.dumps(carry),
    }


def vision_restore_row(row: dict, max_new_tokens: int, max_input_tokens: int) -> dict:
    """The input row back with `_raw` / `_llm_error`: a row that had no usable image gets its reason
    (the stand-in's answer is dropped), any other the engine's outcome (vllm_backend.row_outcome)."""
    out = pickle.loads(row[CARRY])
    reason = out.pop(IMAGE_REASON, "")
    raw, error = ("", reason) if reason else row_outcome(row, max_new_tokens, max_input_tokens)
    out[RAW], out[LLM_ERROR] = raw, error
    return out


def vllm_vision_generate(
    ds: Any,
    cfg: LLMConfig,
    model_path: str,
    schema: dict | None,
    resources: Any,
    stage: str,
    image_column: str | None = "image",
    load_image: Callable[[Any], bytes | None] | None = None,
    max_images: int = 1,
) -> Any:
    """Add `_raw` / `_llm_error` to every row of `ds`, prompting a VLM with `_messages` and the image.

    `schema`: JSON-schema structured output, or None for free text (captions, descriptions).
    """
    from ray.data.llm import build_processor

    check_engine_fits(cfg, resources, stage)
    if schema is None:
        cfg = dataclasses.replace(cfg, guided=False)
    sampling = vllm_sampling_params(cfg, schema or {})
    light = row_map_kwargs(resources)
    prepared = ds.map(
        partial(vlm_preprocess_row, sampling=sampling, image_column=image_column, load_image=load_image,
                model_path=model_path),
        **light,
    )
    # One stage of Ray's own: the engine. The prompt is rendered and the images decoded in the preprocess
    # above (what the prepare-multimodal, chat-template and tokenize stages did, one copy of the row
    # instead of four), and vLLM's own text is kept (no detokenize stage).
    processor = build_processor(
        vllm_processor_config(
            cfg, model_path, resources,
            prepare_multimodal_stage={"enabled": False},
            chat_template_stage={"enabled": False},
            tokenize_stage={"enabled": False},
            detokenize_stage={"enabled": False},
            # vLLM sizes its multimodal budget per prompt; more than one image must be allowed here.
            engine_kwargs={"limit_mm_per_prompt": {"image": max_images}} if max_images > 1 else {},
        ),
        preprocess=None,  # the rows are already requests (only their columns: no second copy of the row)
        postprocess=vllm_postprocess_row,
        preprocess_map_kwargs=light,
        postprocess_map_kwargs=light,
    )
    restore = partial(
        vision_restore_row, max_new_tokens=cfg.max_new_tokens, max_input_tokens=cfg.max_input_tokens
    )
    return processor(prepared).map(restore, **light)
