"""A stand-in for `pipeline.models.gme` while that module is written on another branch (gme-model).

It implements the agreed contract's light half (GmeConfig, GmeInput, GmeImageError, resize_for_gme);
GmeEmbedder itself refuses to load, since unit tests replace it with a deterministic fake anyway.
`install()` registers it only when the real module is missing, so once gme-model is merged the stage
tests run against the real config, input and error classes. Delete this file after that merge.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass


@dataclass(frozen=True)
class GmeConfig:
    model: str = "tiny:gme"
    query_instruction: str = "Find an image that matches the given caption."
    max_length: int = 1800
    min_image_tokens: int = 256
    max_image_tokens: int = 1024
    dtype: str = "auto"
    batch_size: int = 8


@dataclass(frozen=True)
class GmeInput:
    text: str | None = None
    image: object | None = None
    instruction: str | None = None
    title: str | None = None


class GmeImageError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GmeEmbedder:
    def __init__(self, model_path: str, cfg: GmeConfig, device=None) -> None:
        raise NotImplementedError("gme_stub: the real GmeEmbedder lives on branch gme-model")


def resize_for_gme(img, min_tokens: int, max_tokens: int):
    if min(img.size) < 28:
        raise GmeImageError("error:image_too_small")
    return img


def install() -> None:
    try:
        import pipeline.models.gme
    except ModuleNotFoundError:
        module = types.ModuleType("pipeline.models.gme")
        for name in ("GmeConfig", "GmeInput", "GmeImageError", "GmeEmbedder", "resize_for_gme"):
            setattr(module, name, globals()[name])
        sys.modules["pipeline.models.gme"] = module
        import pipeline.models

        pipeline.models.gme = module
