"""Numbers for the dataset card, computed by streaming the export's Parquet files batch by batch.

Memory stays bounded by one record batch plus the score values and a fixed-size language sample.
Columns are looked up by role, so the card works on today's export (query / text / image) and on the
GME triplet schema (query_text, query_image, pos_text, neg_texts, task, image_source, scores, DESIGN §4)
and on MegaPairs triplets (q_text / q_texts lists of instructions, q_img, t_img; card/megapairs.py
counts the rest).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.fs import RunFS

# Role -> candidate columns, first present wins.
QUERY_TEXT = ("query_text", "rewritten_query", "query", "q_text", "q_texts")
QUERY_IMAGE = ("query_image", "q_img")
POS_TEXT = ("pos_text", "text")
POS_IMAGE = ("pos_image", "image", "t_img")
TOP_LEVEL_SCORES = ("consistency_rank", "consistency_score", "clip_score", "gme_score")
USED = {
    *QUERY_TEXT,
    *QUERY_IMAGE,
    *POS_TEXT,
    *POS_IMAGE,
    *TOP_LEVEL_SCORES,
    "task",
    "image_source",
    "image_license",
    "neg_texts",
    "scores",
}
LANGUAGE_SAMPLE = 400
MIN_CONFIDENCE = 0.5
UNDETERMINED = "und"
BATCH_ROWS = 512


def pick(names: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in names), None)


@dataclass
class SplitStats:
    rows: int = 0
    tasks: Counter = field(default_factory=Counter)
    query_modality: Counter = field(default_factory=Counter)
    pos_modality: Counter = field(default_factory=Counter)
    image_source: Counter = field(default_factory=Counter)
    # Query-image license -> rows ("unknown" where the row has an image but no license).
    image_license: Counter = field(default_factory=Counter)
    negatives: Counter = field(default_factory=Counter)  # negatives per row -> rows


@dataclass
class ExportStats:
    columns: list[str]
    splits: dict[str, SplitStats]
    scores: dict[str, np.ndarray]
    languages: Counter
    language_sampled: int

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.splits.values())

    def has(self, column: str) -> bool:
        return column in self.columns


def _modality(text: pa.Array | None, image: pa.Array | None, n: int) -> list[str]:
    has_text = [bool(t) for t in text.to_pylist()] if text is not None else [False] * n
    has_img = image.is_valid().to_pylist() if image is not None else [False] * n
    return [
        "+".join(k for k, on in (("text", t), ("image", i)) if on) or "empty"
        for t, i in zip(has_text, has_img)
    ]


def _score_values(batch: pa.RecordBatch) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    names = batch.schema.names
    for name in TOP_LEVEL_SCORES:
        if name in names:
            out[name] = [float(v) for v in batch.column(name).to_pylist() if v is not None]
    if "scores" in names and pa.types.is_struct(batch.schema.field("scores").type):
        col = batch.column("scores")
        for i, sub in enumerate(col.type):
            values = col.field(i)
            if pa.types.is_list(sub.type) or pa.types.is_large_list(sub.type):
                values = values.flatten()
            if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
                out[f"scores.{sub.name}"] = [float(v) for v in values.to_pylist() if v is not None]
    return out


class _Reservoir:
    """A seeded uniform sample of at most `size` texts from a stream (Algorithm R)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seen, self.items, self.rng = size, 0, [], random.Random(seed)

    def add(self, text: str) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(text)
        elif (j := self.rng.randrange(self.seen)) < self.size:
            self.items[j] = text


def export_stats(run_fs: RunFS, splits: dict[str, list[str]], seed: int = 0) -> ExportStats:
    columns: list[str] = []
    per_split: dict[str, SplitStats] = {}
    scores: dict[str, list[np.ndarray]] = {}
    sample = _Reservoir(LANGUAGE_SAMPLE, seed)
    for split, files in splits.items():
        stats = per_split.setdefault(split, SplitStats())
        for rel in files:
            with run_fs.fs.open_input_file(run_fs.path(rel)) as f:
                pf = pq.ParquetFile(f)
                columns = columns or pf.schema_arrow.names
                # Only the columns the card counts: never neg_images or other payload columns.
                wanted = [c for c in pf.schema_arrow.names if c in USED]
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
                    _add_batch(stats, batch, scores, sample)
    languages = Counter(detect_language(t) for t in sample.items)
    return ExportStats(
        columns,
        per_split,
        {k: np.concatenate(v) for k, v in scores.items() if v},
        languages,
        len(sample.items),
    )


def _add_batch(stats: SplitStats, batch: pa.RecordBatch, scores: dict, sample: _Reservoir) -> None:
    names, n = batch.schema.names, batch.num_rows
    stats.rows += n
    col = lambda role: batch.column(c) if (c := pick(names, role)) else None
    if "task" in names:
        stats.tasks.update(str(t) for t in batch.column("task").to_pylist())
    stats.query_modality.update(_modality(col(QUERY_TEXT), col(QUERY_IMAGE), n))
    stats.pos_modality.update(_modality(col(POS_TEXT), col(POS_IMAGE), n))
    if "image_source" in names:
        sources = batch.column("image_source").to_pylist()
        stats.image_source.update(str(s) for s in sources if s is not None)
        if "image_license" in names:
            licenses = batch.column("image_license").to_pylist()
            stats.image_license.update(lic or "unknown" for lic, s in zip(licenses, sources) if s is not None)
    if "neg_texts" in names:
        stats.negatives.update(len(v or []) for v in batch.column("neg_texts").to_pylist())
    for name, values in _score_values(batch).items():
        scores.setdefault(name, []).append(np.asarray(values, dtype=np.float32))
    for role in (QUERY_TEXT, POS_TEXT):
        if (texts := col(role)) is not None:
            for text in texts.to_pylist():
                text = " ".join(t for t in text if t) if isinstance(text, list) else text
                if text:
                    sample.add(text[:500])


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    # Normalised probabilities and a floor: text in no language (a random model's output) is "und",
    # not a confident-looking guess such as Welsh.
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True, min_confidence=MIN_CONFIDENCE)


def detect_language(text: str) -> str:
    """ISO 639-1 code by py3langid (a small n-gram model shipped in the package), or "und"."""
    return _identifier().classify(text)[0]


def card_languages(languages: Counter, sampled: int, min_share: float = 0.05) -> list[str]:
    """Languages that make up at least `min_share` of the sample (noise from odd texts stays out)."""
    return sorted(
        lang for lang, n in languages.items() if lang != UNDETERMINED and sampled and n / sampled >= min_share
    )
