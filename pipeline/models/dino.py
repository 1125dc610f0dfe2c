"""DINOv2 image embeddings through transformers (the MegaPairs `dino` view: visual-pattern similarity).

`AutoModel` + `AutoImageProcessor` from a checkpoint folder or hub id (`tiny:dinov2` is a seeded random
tiny DINOv2 built locally, models/tiny.py; GPU configs name `facebook/dinov2-large`). The vector is the
CLS token (`cls`) or the mean of the patch tokens (`mean`; register tokens, when the model has them,
are left out), from the final layer-normed hidden states, L2-normalised, float32: inner product =
cosine. An all-zero vector stays zero (cosine 0 with everything) instead of becoming NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

POOLINGS = ("cls", "mean")


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero (and non-finite) rows become zero rows."""
    vectors = np.nan_to_num(np.asarray(vectors, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(
        np.where(norms > 1e-12, vectors / np.maximum(norms, 1e-12), 0.0), dtype=np.float32
    )


class DinoModel:
    """A DINOv2 model and its image processor, loaded once (per Ray actor)."""

    def __init__(self, path: str, pooling: str = "cls", batch_size: int = 32) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModel

        from pipeline.logging import quiet_transformers

        if pooling not in POOLINGS:
            raise ValueError(f"dino: pooling must be one of {POOLINGS} (got {pooling!r})")
        quiet_transformers()
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.pooling = pooling
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        # Patch tokens start after CLS and any register tokens (Dinov2WithRegisters).
        self.first_patch = 1 + int(getattr(self.model.config, "num_register_tokens", 0) or 0)

    def encode_images(self, images: list[Any]) -> np.ndarray:
        """PIL images (RGB) -> (n, dim) normalised vectors."""
        out = []
        for start in range(0, len(images), self.batch_size):
            inputs = self.processor(images=images[start : start + self.batch_size], return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, self.model.dtype)
            with self.torch.inference_mode():
                hidden = self.model(pixel_values=pixels).last_hidden_state
            pooled = hidden[:, 0] if self.pooling == "cls" else hidden[:, self.first_patch :].mean(dim=1)
            out.append(pooled.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return normalise(np.concatenate(out))
