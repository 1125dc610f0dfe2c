"""What `fusegen eval` trains and evaluates on: a run's (or any export's) triplets as queries and a pool.

Any input `fusegen validate` reads works (a run dir, its `export/`, or an export folder in the gme,
megapairs, ms-swift, mmeb or mbeir format): the format's own reader (exporters/validate.py `READERS`)
yields `Triplet`s. Each becomes an `EvalQuery` (text, image, positive, negatives, the group that must not
cross splits, the task type, the image source where the run records it); candidates are keyed by doc id
(else by content) and pooled over every split, so evaluation ranks against the whole candidate pool.

Splits: the export's own `validation` split (held out by doc id when it was written; checked here);
without one, a seeded share of groups is held out and the report says so. A group in both splits is an
EvalError. Images are kept once each, by SHA-256 of their bytes.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from pipeline.errors import EvalError
from pipeline.eval.config import EvalConfig, HoldoutConfig
from pipeline.exporters.validate import READERS, detect
from pipeline.exporters.view import Candidate, Img, Problems, Triplet
from pipeline.logging import get_logger

log = get_logger(__name__)
VALIDATION_NAMES = ("validation", "val", "dev")


@dataclass(frozen=True)
class EvalQuery:
    id: str
    text: str
    image: str | None
    pos: str
    negs: tuple[str, ...]
    group: str
    task: str
    source: str | None = None


@dataclass(frozen=True)
class CandidateRec:
    text: str
    image: str | None


@dataclass
class EvalData:
    format: str
    root: str
    train: list[EvalQuery]
    validation: list[EvalQuery]
    candidates: dict[str, CandidateRec]
    images: dict[str, bytes]
    # None: the export's own validation split; else {"ratio", "seed", "groups"} of the seeded hold-out.
    holdout: dict | None = None
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    ignored_splits: dict[str, int] = field(default_factory=dict)
    sampled_out: int = 0

    @property
    def candidate_mode(self) -> str:
        """`text` when every candidate has text (GME passages), else `image` (MegaPairs targets)."""
        return "text" if all(c.text.strip() for c in self.candidates.values()) else "image"


class _Reader:
    """Turns Triplets into EvalQuery rows, collecting candidates and images as it goes."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.candidates: dict[str, CandidateRec] = {}
        self.images: dict[str, bytes] = {}
        self.sources = sources

    def image(self, img: Img | None) -> str | None:
        if img is None:
            return None
        data = img.read()
        key = hashlib.sha256(data).hexdigest()
        self.images.setdefault(key, data)
        return key

    def candidate(self, c: Candidate) -> str:
        image = self.image(c.image)
        key = c.doc_id or "sha:" + hashlib.sha256(f"{' '.join(c.text.split())}\x1f{image}".encode()).hexdigest()
        self.candidates.setdefault(key, CandidateRec(c.text or "", image))
        return key

    def query(self, t: Triplet, no: int) -> EvalQuery:
        image = self.image(t.query_image)
        pos = self.candidate(t.pos)
        negs = tuple(k for k in (self.candidate(n) for n in t.negs) if k != pos)
        cand = self.candidates[pos]
        task = f"{_modality(t.query_text, image)}2{_modality(cand.text, cand.image)}"
        qid = t.id or f"row{no}"
        return EvalQuery(qid, t.query_text or "", image, pos, negs, t.group or pos, task, self.sources.get(qid))


def _modality(text: str, image: str | None) -> str:
    return ("i" if image else "") + ("t" if (text or "").strip() else "")


def image_sources(fmt: str, root: str) -> dict[str, str]:
    """id -> image_source (doc / retrieved / generated) for GME Parquet exports, which record it."""
    folder = os.path.join(root, "data")
    if fmt != "gme" or not os.path.isdir(folder):
        return {}
    out: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".parquet") and "image_source" in pq.read_schema(os.path.join(folder, name)).names:
            table = pq.read_table(os.path.join(folder, name), columns=["id", "image_source"])
            out.update(zip(table["id"].to_pylist(), table["image_source"].to_pylist()))
    return {k: v for k, v in out.items() if k is not None and v is not None}


def read_triplets(path: str) -> tuple[str, str, _Reader, dict[str, list[EvalQuery]], Problems]:
    """(format, root, reader, split -> queries, problems) for any export fusegen reads."""
    try:
        fmt, root, _marker, _run = detect(path)
    except Exception as exc:  # ExportError and OSError: both mean "not something we can read"
        raise EvalError(f"eval: {path}: {exc}") from exc
    problems = Problems(cap=10)
    reader = _Reader(image_sources(fmt, root))
    splits: dict[str, list[EvalQuery]] = {}
    for no, t in enumerate(READERS[fmt](root, problems)):
        split = "validation" if t.split in VALIDATION_NAMES else t.split
        splits.setdefault(split, []).append(reader.query(t, no))
    if not any(splits.values()):
        raise EvalError(f"eval: {path}: no triplets read ({problems.count} problem(s): {problems.first[:3]})")
    if problems:
        log.warning("eval: %s: %d row(s) or file(s) could not be read: %s", path, problems.count, problems.first[:3])
    return fmt, root, reader, splits, problems


def load(path: str, cfg: EvalConfig) -> EvalData:
    """The input's training and validation queries and its whole candidate pool."""
    fmt, root, reader, splits, problems = read_triplets(path)
    train, validation = splits.pop("train", []), splits.pop("validation", [])
    holdout = None
    if not validation:
        train, validation, holdout = hold_out(train, cfg.holdout)
    check_disjoint(train, validation)
    sampled_out = 0
    if cfg.max_train_rows is not None and len(train) > cfg.max_train_rows:
        sampled_out = len(train) - cfg.max_train_rows
        train = random.Random(cfg.holdout.seed).sample(train, cfg.max_train_rows)
    if not train:
        raise EvalError(f"eval: {path}: no training rows (splits: {sorted(splits) + ['validation']})")
    return EvalData(fmt, root, train, validation, reader.candidates, reader.images, holdout, problems.first,
                    problems.count, {k: len(v) for k, v in splits.items()}, sampled_out)


def hold_out(rows: list[EvalQuery], cfg: HoldoutConfig) -> tuple[list[EvalQuery], list[EvalQuery], dict]:
    """Split by group with a seeded hash: every query of a group lands on the same side. At least one
    group goes to each side."""
    groups = sorted({q.group for q in rows})
    if len(groups) < 2:
        raise EvalError(f"eval: the input has no validation split and {len(groups)} doc(s): nothing to hold out")

    def draw(g: str) -> float:
        return int.from_bytes(hashlib.sha256(f"{cfg.seed}\x1f{g}".encode()).digest()[:8], "big") / 2**64

    held = {g for g in groups if draw(g) < cfg.ratio}
    if not held:
        held = {min(groups, key=draw)}
    if len(held) == len(groups):
        held.discard(max(groups, key=draw))
    train = [q for q in rows if q.group not in held]
    validation = [q for q in rows if q.group in held]
    return train, validation, {"ratio": cfg.ratio, "seed": cfg.seed, "groups": len(held), "of_groups": len(groups)}


def check_disjoint(train: list[EvalQuery], validation: list[EvalQuery]) -> None:
    """EvalError naming the groups (doc ids; MegaPairs: query images) that have rows in both splits."""
    both = sorted({q.group for q in train} & {q.group for q in validation})
    if both:
        raise EvalError(
            f"eval: {len(both)} doc id(s) have rows in both train and validation (first: {both[:5]}); the "
            "evaluation would measure memorisation. Re-export the run (its export splits by doc id) or "
            "check it with `fusegen validate`"
        )
