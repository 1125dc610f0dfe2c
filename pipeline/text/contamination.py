"""Contamination check: drop training rows whose text overlaps a user-supplied set of evaluation texts.

Texts are compared as word n-grams after `fold` (casefold, accents stripped; CJK characters count as
one word each), with image tokens (`<image>`, `<|image_1|>`, `<|image_pad|>`) removed. A text is
contaminated when at least `threshold` of its n-grams occur in the evaluation set, or, for a text of
fewer than `ngram` words (a short query), when its whole word sequence equals an evaluation text's.
N-grams are kept as 64-bit hashes (a rolling hash over per-word BLAKE2b hashes), sorted, so the set
ships to workers as one NumPy array and a lookup is a binary search.

Evaluation files: JSONL (or a JSON array of records) and Parquet whose records carry text in any of
`EVAL_TEXT_FIELDS` (a string or a list of strings): MMEB-eval (`qry_text`, `tgt_text`), MMEB-train
(`qry`, `pos_text`, `neg_text`), M-BEIR queries and pools (`query_txt`, `txt`), fusegen's GME rows
(`query_text`, `pos_text`, `neg_texts`) or plain `{"text": ...}`. A file that is missing, empty,
malformed or of no known shape is a PipelineConfigError before any work starts.

Images (`image_distance` set): the images the evaluation files name (contamination_images.py
`EVAL_IMAGE_FIELDS`) are hashed (64-bit dHash), and a row whose query or candidate image is within
`image_distance` bits of one of them is contaminated too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass

import numpy as np

from pipeline.config import check
from pipeline.errors import PipelineConfigError
from pipeline.text.contamination_images import (
    EVAL_IMAGE_FIELDS,
    dhash,
    eval_image_hashes,
    record_images,
    within,
)
from pipeline.text.leak import fold

EVAL_TEXT_FIELDS = (
    "text", "txt", "query_txt", "qry", "qry_text", "tgt_text", "query", "query_text",
    "pos_text", "neg_text", "neg_texts", "caption", "question",
)
_IMAGE_TOKEN = re.compile(r"<\|?image(?:_\d+|_pad)?\|?>")
_WORD = re.compile(r"\w+", re.UNICODE)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
# Multiplier of the rolling n-gram hash (odd, so multiplication is invertible modulo 2**64).
_BASE = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class ContaminationConfig:
    # JSONL / JSON / Parquet files of evaluation texts; empty = no check.
    eval_files: tuple[str, ...] = ()
    # Words per n-gram; 13 as in the GPT-3 contamination study (short texts fall back to exact match).
    ngram: int = 13
    # Share of a text's n-grams found in the evaluation set at which the row is dropped.
    threshold: float = 0.5
    # Near-duplicate images: a query or candidate image whose dHash is within this many bits (of 64) of
    # an evaluation image's is contamination too (0: the same picture re-encoded; 4-6 survives resizing).
    # null: images are not compared (evaluation files often name images that are not on this machine).
    image_distance: int | None = None
    # Folder that relative image paths in the evaluation files resolve against; "": each file's own folder.
    image_root: str = ""

    def __post_init__(self) -> None:
        check(self.ngram >= 1, "export", "contamination.ngram", f"must be >= 1 (got {self.ngram})")
        if self.image_distance is not None:
            check(0 <= self.image_distance <= 32, "export", "contamination.image_distance",
                  f"must be within 0..32 bits, or null (got {self.image_distance})")
        check(0 < self.threshold <= 1, "export", "contamination.threshold",
              f"must be in (0, 1] (got {self.threshold})")


def words(text: str) -> list[str]:
    """Folded words; each CJK character is a word of its own (CJK text has no spaces)."""
    out: list[str] = []
    for word in _WORD.findall(fold(_IMAGE_TOKEN.sub(" ", text or ""))):
        if _CJK.search(word):
            out += [w for w in re.split(f"({_CJK.pattern})", word) if w]
        else:
            out.append(word)
    return out


def _word_hashes(tokens: list[str]) -> np.ndarray:
    return np.array(
        [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in tokens],
        dtype=np.uint64,
    )


def ngram_hashes(tokens: list[str], n: int) -> np.ndarray:
    """One uint64 per n-gram (position-sensitive rolling hash; wraps modulo 2**64)."""
    if len(tokens) < n:
        return np.zeros(0, np.uint64)
    h = _word_hashes(tokens)
    out = np.zeros(len(tokens) - n + 1, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            out = out * _BASE + h[j : len(h) - n + 1 + j]
    return out


def sequence_hash(tokens: list[str]) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(tokens).encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class EvalNgrams:
    """The evaluation set, ready for lookups: sorted unique n-gram and short-text hashes."""

    ngrams: np.ndarray
    exact: np.ndarray
    n: int
    threshold: float
    texts: int
    # dHashes of the evaluation images (sorted, unique) and the distance that counts as a near-duplicate.
    images: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.uint64))
    image_distance: int | None = None

    @classmethod
    def build(cls, texts: list[str], n: int, threshold: float) -> EvalNgrams:
        grams, exact = [], []
        for text in texts:
            tokens = words(text)
            if tokens:
                grams.append(ngram_hashes(tokens, n))
                exact.append(sequence_hash(tokens))
        merged = np.unique(np.concatenate(grams)) if grams else np.zeros(0, np.uint64)
        return cls(merged, np.unique(np.array(exact, np.uint64)), n, threshold, len(texts))

    def overlap(self, text: str) -> float:
        """Share of the text's n-grams in the evaluation set (1.0 / 0.0 for a short text: exact match)."""
        tokens = words(text)
        if not tokens:
            return 0.0
        if len(tokens) < self.n:
            return 1.0 if _member(self.exact, np.array([sequence_hash(tokens)], np.uint64))[0] else 0.0
        grams = ngram_hashes(tokens, self.n)
        return float(_member(self.ngrams, grams).mean())

    def contaminated(self, text: str | None) -> bool:
        return bool(text) and self.overlap(text) >= self.threshold

    @property
    def checks_images(self) -> bool:
        return self.image_distance is not None and len(self.images) > 0

    def near_duplicate(self, data: bytes | None) -> bool:
        """Whether the image is within `image_distance` bits of an evaluation image (False when images are
        not checked or the bytes are no image: the stages that decode images reject those)."""
        if not data or not self.checks_images:
            return False
        h = dhash(data)
        return h is not None and within(self.images, h, self.image_distance)


def _member(sorted_set: np.ndarray, values: np.ndarray) -> np.ndarray:
    if not len(sorted_set):
        return np.zeros(len(values), bool)
    pos = np.searchsorted(sorted_set, values).clip(0, len(sorted_set) - 1)
    return sorted_set[pos] == values


def read_eval_texts(path: str) -> list[str]:
    """Every evaluation text of one file; PipelineConfigError naming the file when it is unusable."""
    return read_eval_file(path)[0]


def read_eval_file(path: str, images: bool = False, image_root: str = "") -> tuple[list[str], list[bytes]]:
    """(texts, image bytes when `images`) of one evaluation file; PipelineConfigError when it is unusable."""
    where = f"export: `contamination.eval_files` entry {path!r}"
    if not os.path.isfile(path):
        raise PipelineConfigError(f"{where} does not exist or is not a file; fix the path or remove it")
    if os.path.getsize(path) == 0:
        raise PipelineConfigError(f"{where} is empty; give a file of evaluation texts or remove it")
    if path.endswith(".parquet"):
        records, seen = _parquet_records(path, where, images)
    elif path.endswith((".jsonl", ".ndjson", ".json")):
        records, seen = _json_records(path, where)
    else:
        raise PipelineConfigError(f"{where} is of an unknown format; use .jsonl, .json or .parquet")
    texts = [t for record in records for t in _texts(record)]
    if not records:
        raise PipelineConfigError(f"{where} holds no records")
    folder = image_root or os.path.dirname(os.path.abspath(path))
    blobs = [b for r in records for b in record_images(r, folder, where)] if images else []
    if not texts and not blobs:
        raise PipelineConfigError(
            f"{where} has no text field fusegen knows (its fields: {', '.join(sorted(seen)) or 'none'}); "
            f"known fields: {', '.join(EVAL_TEXT_FIELDS)}"
        )
    return texts, blobs


def _texts(record: dict) -> list[str]:
    out = []
    for field in EVAL_TEXT_FIELDS:
        value = record.get(field)
        values = value if isinstance(value, list) else [value]
        out += [v for v in values if isinstance(v, str) and v.strip()]
    return out


def _json_records(path: str, where: str) -> tuple[list[dict], set[str]]:
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PipelineConfigError(f"{where} is not UTF-8 text") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PipelineConfigError(f"{where} is not valid JSON: {exc}") from None
        lines = [(i + 1, r) for i, r in enumerate(rows)]
    else:
        lines = []
        for no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                lines.append((no, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise PipelineConfigError(f"{where}: line {no} is not valid JSON ({exc.msg})") from None
    bad = next((no for no, r in lines if not isinstance(r, dict)), None)
    if bad is not None:
        raise PipelineConfigError(f"{where}: record {bad} is not a JSON object")
    records = [r for _, r in lines]
    return records, {k for r in records[:100] for k in r}


def _parquet_records(path: str, where: str, images: bool = False) -> tuple[list[dict], set[str]]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        wanted = EVAL_TEXT_FIELDS + (EVAL_IMAGE_FIELDS if images else ())
        fields = [f for f in wanted if f in schema.names]
        table = pq.read_table(path, columns=fields)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError or ArrowInvalid for junk files
        raise PipelineConfigError(f"{where} is not a readable Parquet file: {exc}") from None
    if not fields:
        return ([{}] if table.num_rows else []), set(schema.names)
    return table.to_pylist(), set(schema.names)


def eval_identity(paths: tuple[str, ...]) -> dict:
    """The evaluation files' identity for the fingerprint: path, size and SHA-256 of the contents."""
    out = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out.append({"path": os.path.abspath(path), "size": os.path.getsize(path), "sha256": digest.hexdigest()})
    return {"files": out}


def build_eval_set(cfg: ContaminationConfig) -> EvalNgrams | None:
    """Read and index every evaluation file (driver side, before work starts); None when none is set."""
    if not cfg.eval_files:
        return None
    texts: list[str] = []
    hashes = []
    for path in cfg.eval_files:
        file_texts, blobs = read_eval_file(path, cfg.image_distance is not None, cfg.image_root)
        texts += file_texts
        hashes.append(eval_image_hashes(blobs, f"export: `contamination.eval_files` entry {path!r}"))
    built = EvalNgrams.build(texts, cfg.ngram, cfg.threshold)
    images = np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)
    return dataclasses.replace(built, images=images, image_distance=cfg.image_distance)
