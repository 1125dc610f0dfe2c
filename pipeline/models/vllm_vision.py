"""Vision-language prompts through vLLM: text plus the row's image to a Qwen2-VL class model.

Rows carry `_messages` (JSON chat messages, text only, as for the text backends) and an image column.
The image goes into the last user message as an OpenAI-style `image_url` part holding a data URL,
which `ray.data.llm`'s prepare-multimodal stage turns into the model's image input (raw bytes are
not accepted there; a data URL travels through Arrow as a plain string, a PIL image would not). The
image column may hold an HF image struct `{bytes, path}` or raw bytes; a reference into the run's
image store is resolved by the `load_image` callable the caller passes (it runs in the worker).
With `image_column=None` the images are already image parts of `_messages` (several per prompt, up to
`max_images`, e.g. models/vlm.py's two-image prompts); a row with a null `_messages` skips the engine.
Output as for text: `_raw` / `_llm_error` with the fixed reasons of models/vllm_backend.py; a row
without an image is `error:image_missing`, one whose bytes are not a valid image `error:image_<kind>` (io/images),
and neither reaches the engine (a failing `load_image`, e.g. storage, propagates: the shard is redone).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pickle
from collections.abc import Callable
from functools import partial
from typing import Any

from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW, LLMConfig
from pipeline.models.vllm_backend import (
    CARRY,
    check_engine_fits,
    row_map_kwargs,
    vllm_postprocess_row,
    vllm_processor_config,
    vllm_restore_row,
    vllm_sampling_params,
)

IMAGE_MISSING, IMAGE_UNREADABLE = "error:image_missing", "error:image_unreadable"
HAS_IMAGE, IMAGE_REASON = "_has_image", "_image_reason"
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
    """`data:<mime>;base64,...` for image bytes the loader made or checked (`model_image`); the magic bytes
    must name an allowed format (io/images.sniff_format), so nothing else reaches the engine's decoder.

    Raises:
        ValueError: the bytes do not start as an allowed image format.
    """
    from pipeline.io.images import sniff_format

    fmt = sniff_format(data)
    if fmt is None:
        raise ValueError(f"not an allowed image format: first bytes {data[:8]!r}")
    return f"data:{_MIME[fmt]};base64,{base64.b64encode(data).decode('ascii')}"


def model_image(data: bytes) -> bytes:
    """Input image bytes as the engine should get them, through the one image loader (io/images.fit_image:
    allowed formats, pixel cap): a plain upright JPEG/PNG keeps its bytes; anything else (EXIF-rotated,
    CMYK, 16-bit, animated, WebP, BMP) is sent normalised.

    Raises:
        ImageError: the bytes are not a valid image.
    """
    from pipeline.io.images import STORED_LIMITS, fit_image

    return fit_image(data, STORED_LIMITS, max_side=1 << 16, max_aspect=float("inf")).data


def attach_image(messages: list[dict], url: str) -> list[dict]:
    """The messages with the image put before the text of the last user message."""
    out = [dict(m) for m in messages]
    last = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=None)
    if last is None:
        raise ValueError("no user message to attach the image to")
    content = out[last]["content"]
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    out[last]["content"] = [{"type": "image_url", "image_url": {"url": url}}, *parts]
    return out


def vlm_preprocess_row(row: dict, sampling: dict, image_column: str | None, load_image: Callable | None) -> dict:
    """The processor's input row: messages with the image, or a marker that skips the engine."""
    carry = {k: v for k, v in row.items() if k != MESSAGES}
    if image_column is None:
        messages = json.loads(row[MESSAGES]) if row.get(MESSAGES) is not None else None
        return {"messages": messages or [], "sampling_params": dict(sampling), CARRY: pickle.dumps(carry),
                HAS_IMAGE: messages is not None}
    from pipeline.io.images import ImageError

    value = row.get(image_column)
    # A failing read in `load_image` propagates (R35); bytes that are not a valid image skip the engine.
    data = load_image(value) if load_image is not None and value is not None else image_bytes(value)
    messages, reason = None, IMAGE_MISSING
    if data:
        try:
            url = data_url(model_image(data))
        except ImageError as exc:
            reason = f"error:image_{exc.kind}"
        except ValueError:
            reason = IMAGE_UNREADABLE
        else:
            messages = attach_image(json.loads(row[MESSAGES]), url)
    return {
        "messages": messages or [],
        "sampling_params": dict(sampling),
        CARRY: pickle.dumps(carry),
        HAS_IMAGE: messages is not None,
        IMAGE_REASON: "" if messages is not None else reason,
    }


def missing_image_row(row: dict) -> dict:
    """A row without a usable image, restored with its reason (it never went to the engine)."""
    out = pickle.loads(row[CARRY])
    out[RAW], out[LLM_ERROR] = "", row.get(IMAGE_REASON) or IMAGE_MISSING
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
        partial(vlm_preprocess_row, sampling=sampling, image_column=image_column, load_image=load_image),
        **light,
    )
    # Two branches of one lazy plan: rows without an image skip the engine and come back as rejects.
    missing = prepared.filter(lambda r: not r[HAS_IMAGE], **light).map(missing_image_row, **light)
    ready = prepared.filter(lambda r: r[HAS_IMAGE], **light)
    processor = build_processor(
        vllm_processor_config(
            cfg, model_path, resources, prepare_multimodal_stage={"enabled": True},
            # vLLM sizes its multimodal budget per prompt; more than one image must be allowed here.
            engine_kwargs={"limit_mm_per_prompt": {"image": max_images}} if max_images > 1 else {},
        ),
        preprocess=lambda r: {k: r[k] for k in ("messages", "sampling_params", CARRY)},
        postprocess=vllm_postprocess_row,
        preprocess_map_kwargs=light,
        postprocess_map_kwargs=light,
    )
    restore = partial(
        vllm_restore_row, max_new_tokens=cfg.max_new_tokens, max_input_tokens=cfg.max_input_tokens
    )
    return processor(ready).map(restore, **light).union(missing)
