"""The frozen towers of `fusegen eval`: a sentence-transformers text model and an open_clip image model.

Every distinct text and image of the input is embedded once (`embed_features`); the variants and seeds
then train small adapters over these features (pipeline/eval/model.py), so towers cost one pass however
many models are compared. `describe()` tells the report which towers are random tiny models
(`tiny:*`), so nobody reads a plumbing run as a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import EvalError
from pipeline.eval.config import EvalConfig
from pipeline.eval.data import EvalData
from pipeline.logging import get_logger

log = get_logger(__name__)


@dataclass
class Features:
    """Frozen features: `texts[i]` embeds as `text[i]`, image key `image_keys[j]` as `image[j]`."""

    text: np.ndarray
    image: np.ndarray
    text_index: dict[str, int]
    image_index: dict[str, int]


def device_of(cfg: EvalConfig) -> str:
    import torch

    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise EvalError("eval: `device: cuda` but torch sees no GPU; use device: auto or cpu")
    return cfg.device


class Towers:
    """The text tower, and the image tower unless `image.model` is null."""

    def __init__(self, cfg: EvalConfig) -> None:
        from sentence_transformers import SentenceTransformer

        from pipeline.logging import quiet_transformers
        from pipeline.models.sources import resolve_model

        quiet_transformers()
        cache = Path(cfg.cache_dir).expanduser()
        self.device = device_of(cfg)
        self.batch = cfg.embed_batch_size
        path, self.text_id = resolve_model(cfg.text.model, cache, None, "eval.text.model")
        self.text_model = SentenceTransformer(path, device=self.device)
        self.text_model.max_seq_length = cfg.text.max_seq_length
        self.text_model_name = cfg.text.model
        self.image_model = None
        self.image_id = None
        self.image_model_name = cfg.image.model
        if cfg.image.model:
            from pipeline.models.clip import ClipConfig, ClipModel, open_clip_name

            name, self.image_id = open_clip_name(cfg.image.model, cache)
            self.image_model = ClipModel(name, ClipConfig(cfg.image.model, cfg.image.pretrained, self.batch))

    def describe(self) -> dict:
        dim = getattr(self.text_model, "get_embedding_dimension", None) or self.text_model.get_sentence_embedding_dimension
        out = {"text": {"model": self.text_model_name, "identity": self.text_id, "dim": int(dim()),
                        "random_tiny": _is_tiny(self.text_id)}}
        if self.image_model is not None:
            out["image"] = {"model": self.image_model_name, "identity": self.image_id, "dim": self.image_model.dim,
                            "random_tiny": _is_tiny(self.image_id)}
        else:
            out["image"] = None
        out["device"] = self.device
        return out

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        dim = self.describe()["text"]["dim"]
        if not texts:
            return np.zeros((0, dim), np.float32)
        vecs = self.text_model.encode(texts, batch_size=self.batch, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def embed_images(self, blobs: list[bytes]) -> np.ndarray:
        from pipeline.io.images import ImageError, decode_image

        images = []
        for no, data in enumerate(blobs):
            try:
                images.append(decode_image(data))
            except ImageError as exc:
                raise EvalError(f"eval: image {no} of the input does not decode ({exc}); "
                                "run `fusegen validate` on it") from None
        return self.image_model.encode_images(images)


def _is_tiny(identity: str | None) -> bool:
    return bool(identity) and ("random tiny model" in identity or identity.startswith("tiny:"))


def embed_features(towers: Towers, data: EvalData, extra_texts: list[str] = (),
                   extra_images: dict[str, bytes] | None = None) -> Features:
    """Embed each distinct text (queries, candidates) and, with an image tower, each distinct image."""
    texts = sorted({q.text for q in (*data.train, *data.validation)} | {c.text for c in data.candidates.values()}
                   | set(extra_texts))
    images = dict(data.images)
    images.update(extra_images or {})
    keys = sorted(images) if towers.image_model is not None else []
    log.info("eval: embedding %d texts and %d images with the frozen towers", len(texts), len(keys))
    text = towers.embed_texts(texts)
    image = towers.embed_images([images[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
    return Features(text, image, {t: i for i, t in enumerate(texts)}, {k: i for i, k in enumerate(keys)})
