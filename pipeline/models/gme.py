"""GME embeddings (gme-Qwen2-VL) on plain transformers: one vector per text, image or fused text+image input.

The recipe follows the released inference script (Alibaba-NLP/gme-Qwen2-VL-*-Instruct, `gme_inference.py`,
DESIGN.md §2), with no remote code:
- the input is a chat string: system = the instruction ("You are a helpful assistant." for candidates),
  user = an image placeholder (if any) then the text, the assistant turn opened and `<|endoftext|>` appended
  (`render_text`); a document with a title is encoded as `title + " " + text`;
- images are converted to RGB and resized to multiples of 28 by the script's own step, then bounded to
  `min_image_tokens..max_image_tokens` tokens (28 x 28 pixels each), as the processor did (`resize_for_gme`);
- right padding, truncation at `max_length` tokens;
- the language model runs with plain sequential positions: the script called the text decoder (transformers
  4.4x `model.model`) on its own input embeddings with no position ids, so Qwen2-VL's 3D (M-RoPE) image
  positions were never used;
- embedding = last hidden state of the last non-padding token (index = attention-mask length - 1), L2-normalised.

Contract: `GmeEmbedder.encode(inputs)` returns an (n, dim) float32 array, row i for inputs[i], each row of
unit length, so inner product = cosine similarity. Bad images raise `GmeImageError` with a reject reason.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from pipeline.config import check
from pipeline.errors import PipelineConfigError
from pipeline.logging import get_logger
from pipeline.models.llm_config import LLMConfig

if TYPE_CHECKING:
    import torch

log = get_logger(__name__)

# Candidates (is_query=False in the released script) always get this system prompt.
DEFAULT_INSTRUCTION = "You are a helpful assistant."
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
# One image token is a 2 x 2 merge of 14-pixel ViT patches.
FACTOR = 28
# Qwen2-VL's processor refuses images longer than 200:1.
MAX_RATIO = 200
# The released script's own resize step (qwen_vl_utils defaults) runs before the token bounds.
FETCH_MIN_TOKENS, FETCH_MAX_TOKENS = 4, 16384
# The weights a GME checkpoint does not ship: it embeds and never decodes.
ABSENT_WEIGHTS = frozenset({"lm_head.weight"})
DTYPES = ("auto", "float16", "bfloat16", "float32")
BACKENDS = ("transformers", "vllm")


@dataclass(frozen=True)
class GmeConfig:
    # `tiny:gme`, `pkg:<package>`, a local directory or a hub id (pipeline.models.sources.resolve_model).
    model: str = "tiny:gme"
    # The instruction callers put on query inputs (GmeInput.instruction); candidates keep the default.
    query_instruction: str = "Find a Wikipedia passage that answers the question about the image."
    # Tokens per input, image tokens included; the released script truncates at 1800.
    max_length: int = 1800
    # Image token bounds: 256..1280 in the paper's evaluation; 1024 keeps parity with training.
    min_image_tokens: int = 256
    max_image_tokens: int = 1024
    # auto: bfloat16 on CUDA, float32 on CPU (CPU half precision is slow and lossy).
    dtype: str = "auto"
    # Inputs per forward pass when `encode` is not given one.
    batch_size: int = 8
    # transformers: `GmeEmbedder` in the stage's actors (dtype above); vllm: vLLM's pooling runner through
    # `ray.data.llm` (models/vllm_embed.py, GME's sequential positions), the engine set by `vllm`.
    backend: Literal["transformers", "vllm"] = "transformers"
    # The engine for backend vllm: vllm_device, dtype, max_model_len (>= max_length), memory share,
    # parallelism, schedule_grace_s. Its model and generation fields are unused (the model is `model`).
    vllm: LLMConfig = dataclasses.field(default_factory=lambda: LLMConfig(backend="vllm"))

    def __post_init__(self) -> None:
        check(bool(self.model.strip()), "gme", "model", "must name a model")
        check(self.backend in BACKENDS, "gme", "backend", f"must be one of {BACKENDS} (got {self.backend!r})")
        check(self.dtype in DTYPES, "gme", "dtype", f"must be one of {DTYPES} (got {self.dtype!r})")
        check(self.batch_size >= 1, "gme", "batch_size", f"must be >= 1 (got {self.batch_size})")
        check(
            FETCH_MIN_TOKENS <= self.min_image_tokens <= self.max_image_tokens <= FETCH_MAX_TOKENS,
            "gme",
            "min_image_tokens",
            f"and max_image_tokens must satisfy {FETCH_MIN_TOKENS} <= min <= max <= {FETCH_MAX_TOKENS} "
            f"(got {self.min_image_tokens}, {self.max_image_tokens})",
        )
        # Truncation must only ever cut text: an image cut short no longer matches its features.
        check(
            self.max_length >= self.max_image_tokens + 64,
            "gme",
            "max_length",
            f"must leave room for the largest image and the template: >= max_image_tokens + 64 "
            f"(got {self.max_length} with max_image_tokens {self.max_image_tokens})",
        )


@dataclass(frozen=True)
class GmeInput:
    """One thing to embed: text, an image, or both (fused)."""

    text: str | None = None
    image: Image.Image | None = None
    # None: the candidate default ("You are a helpful assistant."); queries pass their task instruction.
    instruction: str | None = None
    # A document title, encoded as `title + " " + text`.
    title: str | None = None


class GmeImageError(ValueError):
    """An image GME cannot embed; `reason` is the reject reason (`error:image_too_small`, ...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def render_text(inp: GmeInput) -> str:
    """The chat string the released script builds for one input (the processor expands the placeholder)."""
    instruction = inp.instruction or DEFAULT_INSTRUCTION
    body = " ".join(part for part in (inp.title, inp.text) if part)
    placeholder = IMAGE_PLACEHOLDER if inp.image is not None else ""
    return (
        f"<|im_start|>system\n{instruction}<|im_end|>\n"
        f"<|im_start|>user\n{placeholder}{body}<|im_end|>\n"
        "<|im_start|>assistant\n<|endoftext|>"
    )


def _smart_resize(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen_vl_utils' smart_resize: sides rounded to multiples of 28, area scaled into the pixel bounds."""
    h = max(FACTOR, round(height / FACTOR) * FACTOR)
    w = max(FACTOR, round(width / FACTOR) * FACTOR)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / FACTOR) * FACTOR, math.floor(width / beta / FACTOR) * FACTOR
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / FACTOR) * FACTOR, math.ceil(width * beta / FACTOR) * FACTOR
    return h, w


def resize_for_gme(img: Image.Image, min_tokens: int, max_tokens: int) -> Image.Image:
    """The RGB image the model sees: sides multiples of 28, between `min_tokens` and `max_tokens` tokens.

    Two bicubic resizes, as in the released pipeline: the script's own step (multiples of 28 within 4..16384
    tokens; a side rounded past 200:1 is squeezed back to 200:1), then the processor's token bounds (the
    Qwen2-VL processor of the time resized with PIL too). Everything the released pipeline embeds is kept.

    Raises:
        GmeImageError: `error:image_too_small` for an image with no pixels; `error:image_aspect_ratio` for
            one longer than 200:1 (the processor refuses it) or too long to fit the token bounds (only
            with bounds narrower than the defaults: a thin image's short side cannot go below 28 pixels).
    """
    width, height = img.size
    if min(width, height) < 1:
        raise GmeImageError("error:image_too_small", f"{width}x{height} has no pixels")
    if max(width, height) / min(width, height) > MAX_RATIO:
        raise GmeImageError("error:image_aspect_ratio", f"{width}x{height} is longer than {MAX_RATIO}:1")
    h1, w1 = _smart_resize(height, width, FETCH_MIN_TOKENS * FACTOR**2, FETCH_MAX_TOKENS * FACTOR**2)
    if max(h1, w1) > MAX_RATIO * min(h1, w1):
        h1, w1 = (MAX_RATIO * w1, w1) if h1 > w1 else (h1, MAX_RATIO * h1)
    h2, w2 = _smart_resize(h1, w1, min_tokens * FACTOR**2, max_tokens * FACTOR**2)
    tokens = h2 * w2 // FACTOR**2
    if not min_tokens <= tokens <= max_tokens:
        raise GmeImageError(
            "error:image_aspect_ratio",
            f"{width}x{height} cannot be sized to {min_tokens}..{max_tokens} image tokens (got {w2}x{h2})",
        )
    rgb = img.convert("RGB")
    return rgb.resize((w1, h1), Image.Resampling.BICUBIC).resize((w2, h2), Image.Resampling.BICUBIC)


def resolve_dtype(name: str, device: str) -> torch.dtype:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def load_gme(model_path: str, dtype: torch.dtype):
    """Load a GME checkpoint as `Qwen2VLForConditionalGeneration`, in eval mode.

    Released checkpoints keep the old Qwen2-VL layout (`visual.*`, `model.*`), which transformers renames on
    load, and ship no LM head, which transformers reports missing. That expected report is dropped; any other
    missing, unexpected or mismatched weight is an error, so a checkpoint that would load half random fails.
    """
    from transformers import Qwen2VLForConditionalGeneration

    from pipeline.logging import quiet_transformers

    quiet_transformers()
    reports: list[logging.LogRecord] = []

    def hold_report(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            reports.append(record)
            return False
        return True

    hf_log = logging.getLogger("transformers.modeling_utils")
    hf_log.addFilter(hold_report)
    try:
        model, info = Qwen2VLForConditionalGeneration.from_pretrained(
            model_path, dtype=dtype, output_loading_info=True
        )
    except BaseException:
        hf_log.removeFilter(hold_report)
        for record in reports:  # transformers' own errors point at this report: show it
            hf_log.handle(record)
        raise
    hf_log.removeFilter(hold_report)
    problems = {
        "missing": sorted(set(info["missing_keys"]) - ABSENT_WEIGHTS),
        "unexpected": sorted(info["unexpected_keys"]),
        "mismatched": sorted(str(k) for k in info["mismatched_keys"]),
    }
    if any(problems.values()):
        detail = "; ".join(
            f"{kind}: {keys[:5]}{' ...' if len(keys) > 5 else ''}" for kind, keys in problems.items() if keys
        )
        raise PipelineConfigError(
            f"gme: {model_path} does not load as a GME (Qwen2-VL) checkpoint ({detail}); "
            "check `gme.model` points at a gme-Qwen2-VL folder"
        )
    return model.eval().requires_grad_(False)


class GmeEmbedder:
    """A GME model and its processor, loaded once (per Ray actor)."""

    def __init__(self, model_path: str, cfg: GmeConfig, device: str | None = None) -> None:
        import torch
        from transformers import AutoProcessor

        self.cfg = cfg
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Only the vision tower and the language model are used: the conditional-generation wrapper and
        # its LM head (1 GiB of random weights for the 7B) are dropped with it.
        self.model = load_gme(model_path, resolve_dtype(cfg.dtype, self.device)).model.to(self.device)
        self.processor = AutoProcessor.from_pretrained(model_path)
        # Set after loading: a released preprocessor_config.json's min/max_pixels override a `size` passed
        # to from_pretrained, and passing min/max_pixels instead warns on every call.
        self.processor.image_processor.size = {
            "shortest_edge": cfg.min_image_tokens * FACTOR**2,
            "longest_edge": cfg.max_image_tokens * FACTOR**2,
        }
        self.processor.tokenizer.padding_side = "right"
        self.dim = int(self.model.config.text_config.hidden_size)
        log.debug("loaded GME %s on %s (%s, dim %d)", model_path, self.device, self.model.dtype, self.dim)

    def encode(self, inputs: list[GmeInput], batch_size: int | None = None) -> np.ndarray:
        """Embed `inputs` in batches of `batch_size` (default `cfg.batch_size`) -> (n, dim) float32, unit rows.

        Raises:
            ValueError: an input has no text, title or image.
            GmeImageError: an image cannot be embedded (see `resize_for_gme`).
        """
        size = batch_size or self.cfg.batch_size
        if size < 1:
            raise ValueError(f"gme: batch_size must be >= 1 (got {size})")
        prepared = [self._prepare(i, inp) for i, inp in enumerate(inputs)]
        out = np.zeros((len(inputs), self.dim), np.float32)
        # Similar inputs share a batch so little is padding: by image size, then text length.
        order = sorted(range(len(prepared)), key=lambda i: (_pixels(prepared[i][1]), len(prepared[i][0])))
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            out[rows] = self._embed([prepared[i] for i in rows])
        return out

    def _prepare(self, index: int, inp: GmeInput) -> tuple[str, Image.Image | None]:
        if inp.image is None and not (inp.text or "").strip() and not (inp.title or "").strip():
            raise ValueError(f"gme: input {index} has no text, title or image; there is nothing to embed")
        image = None
        if inp.image is not None:
            image = resize_for_gme(inp.image, self.cfg.min_image_tokens, self.cfg.max_image_tokens)
        return render_text(inp), image

    def _embed(self, batch: list[tuple[str, Image.Image | None]]) -> np.ndarray:
        import torch

        images = [image for _, image in batch if image is not None]
        enc = self.processor(
            text=[text for text, _ in batch],
            images=images or None,
            # resize_for_gme already produced the final size; the processor only normalises and patches.
            do_resize=False,
            padding=True,
            truncation=True,
            max_length=self.cfg.max_length,
            return_tensors="pt",
        )
        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device)
        vision = {}
        if images:
            vision = {
                "pixel_values": enc["pixel_values"].to(self.device),
                "image_grid_thw": enc["image_grid_thw"].to(self.device),
            }
        # Sequential positions, as the released script's decoder call had (see the module docstring).
        positions = torch.arange(ids.shape[1], device=self.device).expand_as(ids)
        with torch.inference_mode():
            hidden = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **vision
            ).last_hidden_state
            last = mask.sum(dim=1) - 1
            vecs = hidden[torch.arange(len(batch), device=self.device), last].float()
            vecs = torch.nn.functional.normalize(vecs, p=2, dim=1)
        return vecs.cpu().numpy()


def _pixels(image: Image.Image | None) -> int:
    return 0 if image is None else image.width * image.height
