"""Free-text vision-language generation (several images per prompt) on every LLM backend.

Rows carry `_messages`: JSON chat messages whose user content may hold OpenAI-style image parts
(`{"type": "image_url", "image_url": {"url": "data:image/...;base64,..."}}`), the one shape the three
backends share; a null `_messages` is a row that needs no answer. Output as for text (models/llm.py):
`_raw` and `_llm_error` ("" or `error:prompt_too_long`, `error:truncated_output`, `error:timeout`, or
the vllm / openai backends' own reasons).
- `transformers`: `HFVisionChat`, a Qwen2-VL class model through `AutoModelForImageTextToText` and
  `AutoProcessor` (image parts become the processor's images, in order), batched greedy `generate`
  under the same watchdog as the text backend.
- `vllm`: models/vllm_vision.py (`ray.data.llm`'s vLLM engine, images decoded in its row map, `limit_mm_per_prompt`).
- `openai`: models/openai_chat.py as is (an OpenAI-compatible vision server reads the data URLs).
No backend constrains the output to a grammar: the text is prose.
"""

from __future__ import annotations

import base64
import dataclasses
import threading
from dataclasses import asdict
from typing import Any

from pipeline.models.llm import (
    HFGenerateFn,
    eos_token_ids,
    generate_by_length,
    generation_kwargs,
    mark_truncated,
)
from pipeline.models.llm_config import LLMConfig
from pipeline.models.watchdog import Watchdog


def split_images(messages: list[dict]) -> tuple[list[dict], list[Any]]:
    """(messages with every image part turned into a `{"type": "image"}` placeholder, the decoded PIL
    images in prompt order): what a transformers processor's chat template and `images=` take.

    Raises:
        ValueError: an image part that is not a base64 data URL of a valid image (io/images.decode_image).
    """
    from pipeline.io.images import ImageError, decode_image

    out, images = [], []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            out.append(dict(message))
            continue
        parts = []
        for part in content:
            if part.get("type") != "image_url":
                parts.append(dict(part))
                continue
            url = part["image_url"]["url"]
            if not url.startswith("data:") or ";base64," not in url:
                raise ValueError(f"image part is not a base64 data URL: {url[:40]!r}")
            data = base64.b64decode(url.split(";base64,", 1)[1])
            try:
                images.append(decode_image(data))
            except ImageError as exc:
                raise ValueError(f"image part is not a valid image: error:image_{exc.kind}") from None
            parts.append({"type": "image"})
        out.append({**message, "content": parts})
    return out, images


class HFVisionChat:
    """Batched free-text generation with a transformers image-text-to-text model (Qwen2-VL class)."""

    def __init__(self, model_path: str, cfg: LLMConfig) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from pipeline.logging import quiet_transformers

        quiet_transformers()
        self.cfg, self.torch = cfg, torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.processor.tokenizer.padding_side = "left"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        tok = self.processor.tokenizer
        self.eos_ids = eos_token_ids(self.model, tok)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def generate(
        self, conversations: list[list[dict] | None], batch_size: int, watchdog: Watchdog | None = None
    ) -> list[tuple[str, str]]:
        """(raw text, error) per conversation, in input order; None gets ("", "") without a model call."""
        results: list[tuple[str, str]] = [("", "")] * len(conversations)
        prompts: dict[int, tuple[str, list]] = {}
        lengths: dict[int, int] = {}
        for i, conv in enumerate(conversations):
            if conv is None:
                continue
            plain, images = split_images(conv)
            text = self.processor.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
            # Image tokens count: the processor expands each placeholder to the image's token count.
            enc = self.processor(text=[text], images=images or None, return_tensors="pt")
            if enc["input_ids"].shape[1] > self.cfg.max_input_tokens:
                results[i] = ("", "error:prompt_too_long")
                continue
            prompts[i], lengths[i] = (text, images), enc["input_ids"].shape[1]
        generate_by_length(prompts, lengths, batch_size, self._generate_batch, watchdog, results)
        return results

    def _generate_batch(
        self, prompts: list[tuple[str, list]], cancel: threading.Event | None = None
    ) -> list[tuple[str, str]]:
        texts = [t for t, _ in prompts]
        images = [im for _, ims in prompts for im in ims]
        enc = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True).to(self.device)
        kwargs = generation_kwargs(self.cfg, cancel, self.pad_id)
        with self.torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1] :]
        return mark_truncated(self.processor.batch_decode(new, skip_special_tokens=True), new, self.eos_ids)


class HFVisionGenerateFn(HFGenerateFn):
    """Ray Data UDF (one model per actor): `_messages` with image parts in, `_raw` and `_llm_error` out;
    models/llm.py's `HFGenerateFn` (same batching, watchdog and columns) around an `HFVisionChat`.

    Raises:
        InferenceHungError: `max_consecutive_timeouts` batches in a row hung (see models/watchdog.py).
    """

    def __init__(self, model_path: str, cfg: dict, batch_size: int) -> None:
        config = LLMConfig(**cfg)
        self._bind(HFVisionChat(model_path, config), config, batch_size)


def generate_text_with_images(
    ds: Any, cfg: LLMConfig, model_path: str, resources: Any, stage: str, max_images: int
) -> Any:
    """Add `_raw` / `_llm_error` to every row of `ds` with the configured backend (free text).

    `max_images`: the most image parts one prompt holds (vLLM reserves memory per image).
    """
    cfg = dataclasses.replace(cfg, guided=False)
    if cfg.backend == "vllm":
        from pipeline.models.vllm_vision import vllm_vision_generate

        return vllm_vision_generate(ds, cfg, model_path, None, resources, stage, image_column=None,
                                    max_images=max_images)
    if cfg.backend == "openai":
        from pipeline.models.openai_chat import openai_generate

        return openai_generate(ds, cfg, {}, resources)
    from pipeline.scheduling import wait_until_schedulable
    from pipeline.stage import actor_map

    bundle = {"CPU": float(resources.num_cpus), "GPU": float(resources.num_gpus)}
    wait_until_schedulable(stage, [bundle], cfg.schedule_grace_s, f"{stage}.vlm.schedule_grace_s")
    kwargs = {"model_path": model_path, "cfg": asdict(cfg), "batch_size": resources.batch_size}
    return actor_map(ds, HFVisionGenerateFn, kwargs, resources)
