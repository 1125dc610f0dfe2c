"""A user's own evaluation set for `fusegen eval` (config `eval_sets`), with overlap against training.

Each set is any export fusegen reads (exporters/validate.py: a GME run or Parquet `data/`, M-BEIR,
MMEB, ms-swift JSONL, MegaPairs); all its rows are queries, ranked against the set's own candidate pool.
A row that overlaps the training data is named in the report and left out: its query or positive text
shares at least `overlap_threshold` of its word n-grams with a training text (the contamination check's
measure, pipeline/text/contamination.py), or its query or positive image is a near-duplicate of a
training query or positive image (64-bit dHash within `overlap_image_distance` bits, as the
contamination check's images).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.eval.data import EvalData, EvalQuery, read_triplets
from pipeline.eval.metrics import by_task, ranks
from pipeline.text.contamination import EvalNgrams
from pipeline.text.contamination_images import dhash, within


@dataclass
class EvalSet:
    name: str
    path: str
    format: str
    data: EvalData
    queries: list[EvalQuery]
    left_out: list[dict] = field(default_factory=list)

    def texts(self) -> list[str]:
        return [q.text for q in self.queries] + [c.text for c in self.data.candidates.values()]

    def space(self, run_space):
        """(query tensors, pool) of this set in the run's feature space."""
        keys = sorted(self.data.candidates)
        pool = run_space.candidate_matrix(self.data.candidates, keys)
        rows = run_space.tensors(self.queries, None, {k: i for i, k in enumerate(keys)})
        return rows, pool

    def evaluate(self, model, space, cfg) -> dict:
        from pipeline.eval.model import score

        rows, pool = space
        if not self.queries:
            return by_task(ranks([], []), [], cfg.ks, cfg.mrr_k)
        scores = score(model, rows, pool)
        return by_task(ranks(scores, rows.pos.cpu().numpy()), [q.task for q in self.queries], cfg.ks, cfg.mrr_k)


def load_eval_set(path: str, train: EvalData, cfg) -> EvalSet:
    fmt, root, reader, splits, problems = read_triplets(path)
    data = EvalData(fmt, root, [], [q for qs in splits.values() for q in qs], reader.candidates, reader.images,
                    None, problems.first, problems.count)
    train_texts = [q.text for q in train.train] + [train.candidates[q.pos].text for q in train.train]
    ngrams = EvalNgrams.build([t for t in train_texts if t.strip()], cfg.overlap_ngram, cfg.overlap_threshold)
    keys = {q.image for q in train.train if q.image} | {
        train.candidates[q.pos].image for q in train.train if train.candidates[q.pos].image}
    hashes = np.array(sorted({h for k in keys if (h := dhash(train.images[k])) is not None}), np.uint64)

    def seen(key: str | None) -> bool:
        h = dhash(data.images[key]) if key else None
        return h is not None and within(hashes, h, cfg.overlap_image_distance)

    kept, left_out = [], []
    for q in data.validation:
        reason = _overlap(q, data, ngrams, seen)
        if reason:
            left_out.append({"id": q.id, "reason": reason})
        else:
            kept.append(q)
    name = os.path.basename(os.path.normpath(path)) or path
    return EvalSet(name, path, fmt, data, kept, left_out)


def _overlap(q: EvalQuery, data: EvalData, ngrams: EvalNgrams, seen: Callable[[str | None], bool]) -> str | None:
    pos = data.candidates[q.pos]
    if q.text.strip() and ngrams.contaminated(q.text):
        return "query_text"
    if pos.text.strip() and ngrams.contaminated(pos.text):
        return "positive_text"
    if seen(q.image):
        return "query_image"
    if seen(pos.image):
        return "positive_image"
    return None
