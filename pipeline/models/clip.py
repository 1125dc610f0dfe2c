"""CLIP image and text towers with open_clip (the images stage's retriever and the clip_filter stage).

`model` is a config string: `tiny:clip` (a seeded random tiny CLIP built locally, models/tiny.py),
`local-dir:/path` or `hf-hub:org/repo` (open_clip's own schemas), or a built-in architecture name
with a `pretrained` tag or weights file (`ViT-L-14` + `openai`, the GME recipe's CLIP). Vectors are
float32 and L2-normalised, so inner product = cosine similarity; the raw cosine is what CLIP-score
thresholds (GME: 0.2 for ViT-L/14) refer to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import check


@dataclass(frozen=True)
class ClipConfig:
    model: str = "tiny:clip"
    # A tag open_clip knows for the architecture (`openai`, `laion2b_s32b_b82k`) or a weights file; unused
    # with `tiny:`, `local-dir:` and `hf-hub:` models, which carry their own weights.
    pretrained: str | None = None
    # Images per forward pass.
    batch_size: int = 32

    def __post_init__(self) -> None:
        check(bool(self.model.strip()), "clip", "model", "must name a model")
        check(self.batch_size >= 1, "clip", "batch_size", f"must be >= 1 (got {self.batch_size})")


def open_clip_name(model: str, cache_dir) -> tuple[str, str]:
    """(name open_clip loads, identity for manifests) for a config string."""
    if model.startswith("tiny:"):
        from pipeline.models.sources import resolve_model

        path, identity = resolve_model(model, cache_dir, None, "clip.model")
        return f"local-dir:{path}", identity
    return model, model


class ClipModel:
    """An open_clip model and its preprocessing, loaded once (per Ray actor); on `device`, by default CUDA
    when there is one."""

    def __init__(self, name: str, cfg: ClipConfig, device: str | None = None) -> None:
        import open_clip
        import torch

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        pretrained = None if name.startswith(("local-dir:", "hf-hub:")) else cfg.pretrained
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=self.device)
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(name)
        self.batch_size = cfg.batch_size

    def encode_images(self, images: list[Any]) -> np.ndarray:
        """PIL images -> (n, dim) normalised vectors."""
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = self.torch.stack([self.preprocess(im) for im in images[start : start + self.batch_size]])
            with self.torch.inference_mode():
                out.append(self.model.encode_image(batch.to(self.device), normalize=True).float().cpu().numpy())
        return _stack(out, self.dim)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[start : start + self.batch_size]).to(self.device)
            with self.torch.inference_mode():
                out.append(self.model.encode_text(tokens, normalize=True).float().cpu().numpy())
        return _stack(out, self.dim)

    @property
    def dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if proj is not None and hasattr(proj, "shape"):
            return int(proj.shape[-1])
        return int(self.model.visual.output_dim)


def _stack(blocks: list[np.ndarray], dim: int) -> np.ndarray:
    if not blocks:
        return np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)
