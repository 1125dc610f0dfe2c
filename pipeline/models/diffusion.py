"""Text-to-image generation with diffusers (the images stage's last resort: the LLM describes the
entity, a diffusion pipeline draws it).

`model` is `tiny:diffusion` (a seeded random tiny Stable Diffusion built locally, models/tiny.py), a
local folder or a hub id loaded with `DiffusionPipeline.from_pretrained` (GPU config: FLUX.1-dev or
SDXL). Every image gets its own seeded generator, so a row's recorded seed reproduces its bytes
whatever batch it was drawn in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import check
from pipeline.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class DiffusionConfig:
    model: str = "tiny:diffusion"
    steps: int = 4
    guidance: float = 3.5
    # Output size in pixels (multiples of 8 for every latent-diffusion pipeline); null = the model's own.
    height: int | None = None
    width: int | None = None
    # Row seeds are `seed` + a stable hash of the row id, so reruns and retries draw the same image.
    seed: int = 0
    # Prompts per pipeline call. 1 makes a row's recorded seed reproduce its exact bytes; bigger batches
    # are faster on a GPU but kernels pick other algorithms per batch size, so pixels may differ slightly.
    batch_size: int = 1
    dtype: str = "auto"

    def __post_init__(self) -> None:
        check(self.steps >= 1, "diffusion", "steps", f"must be >= 1 (got {self.steps})")
        check(self.batch_size >= 1, "diffusion", "batch_size", f"must be >= 1 (got {self.batch_size})")
        for key in ("height", "width"):
            value = getattr(self, key)
            check(value is None or (value >= 8 and value % 8 == 0), "diffusion", key,
                  f"must be a multiple of 8 (got {value})")
        check(self.dtype in ("auto", "float32", "float16", "bfloat16"), "diffusion", "dtype",
              "must be auto, float32, float16 or bfloat16")


class Drawer:
    """A diffusers pipeline loaded once (per Ray actor); on `device`, by default CUDA when there is one."""

    def __init__(self, model_path: str, cfg: DiffusionConfig, device: str | None = None) -> None:
        import torch
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as dlogging

        from pipeline.logging import quiet_transformers

        dlogging.set_verbosity_error()
        dlogging.disable_progress_bar()
        quiet_transformers()  # the pipeline's text encoder loads through transformers
        self.torch = torch
        self.cfg = cfg
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(cfg.dtype)
        if dtype is None:
            dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.pipe = DiffusionPipeline.from_pretrained(model_path, dtype=dtype).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)

    def draw(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        """One PIL image per prompt, each from its own seeded generator.

        Raises:
            torch.OutOfMemoryError: one prompt alone does not fit (a bigger chunk is retried in halves
                first); like any other pipeline error it propagates, so the shard fails and resume redoes
                it: an engine failure is never a verdict on the rows (STYLE R31, R35).
        """
        images: list[Any] = []
        for start in range(0, len(prompts), self.cfg.batch_size):
            end = start + self.cfg.batch_size
            images += self._draw_chunk(prompts[start:end], seeds[start:end])
        return images

    def _draw_chunk(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        try:
            return self._call(prompts, seeds)
        except self.torch.OutOfMemoryError:
            if len(prompts) == 1:
                raise
            log.warning("diffusion: out of memory on %d prompts, retrying in halves", len(prompts))
        # Outside the except block, so the failed call's tensors are released before the retry.
        if self.torch.cuda.is_available():
            self.torch.cuda.empty_cache()
        half = len(prompts) // 2
        return self._draw_chunk(prompts[:half], seeds[:half]) + self._draw_chunk(prompts[half:], seeds[half:])

    def _call(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        gens = [self.torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        kwargs = {"num_inference_steps": self.cfg.steps, "guidance_scale": self.cfg.guidance,
                  "generator": gens}
        if self.cfg.height:
            kwargs["height"] = self.cfg.height
        if self.cfg.width:
            kwargs["width"] = self.cfg.width
        with self.torch.inference_mode():
            return list(self.pipe(prompts, **kwargs).images)
