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
        """One PIL image per prompt, each from its own seeded generator."""
        images: list[Any] = []
        for start in range(0, len(prompts), self.cfg.batch_size):
            chunk = prompts[start : start + self.cfg.batch_size]
            gens = [self.torch.Generator(device="cpu").manual_seed(s) for s in seeds[start : start + len(chunk)]]
            kwargs = {"num_inference_steps": self.cfg.steps, "guidance_scale": self.cfg.guidance, "generator": gens}
            if self.cfg.height:
                kwargs["height"] = self.cfg.height
            if self.cfg.width:
                kwargs["width"] = self.cfg.width
            with self.torch.inference_mode():
                images += list(self.pipe(chunk, **kwargs).images)
        return images
