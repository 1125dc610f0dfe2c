"""Retrieval metrics from a score matrix: recall@k and MRR@k, overall and per task type.

A query's rank is 1 + the number of other candidates scoring at least as high as its positive: ties
count against the positive (an untrained model that scores everything alike ranks last, not first).
A query whose positive is not in the pool is an error; a k larger than the pool is fine (recall@k is
then whether the positive is anywhere in the pool, which it is). No queries: every metric is None.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.errors import EvalError


def ranks(scores: np.ndarray, positives: Sequence[int]) -> np.ndarray:
    """(queries,) 1-based rank of each query's positive among the pool's candidates (columns)."""
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    n_queries = len(positives)
    if n_queries == 0:
        return np.zeros(0, np.int64)
    if scores.ndim != 2 or scores.shape[0] != n_queries:
        raise EvalError(f"metrics: scores must be (queries={n_queries}, pool), got shape {scores.shape}")
    pos = np.asarray(positives, dtype=np.int64)
    if scores.shape[1] == 0 or (pos < 0).any() or (pos >= scores.shape[1]).any():
        raise EvalError(f"metrics: a query's positive is not in the pool of {scores.shape[1]} candidates")
    own = scores[np.arange(n_queries), pos][:, None]
    # >= counts the positive itself once: rank 1 when nothing else reaches its score.
    return (scores >= own).sum(axis=1).astype(np.int64)


def summarise(query_ranks: np.ndarray, ks: Sequence[int], mrr_k: int) -> dict[str, float | int | None]:
    """recall@k for each k, mrr@mrr_k and the query count."""
    r = np.asarray(query_ranks, dtype=np.int64)
    out: dict[str, float | int | None] = {"queries": int(r.size)}
    for k in ks:
        out[f"recall@{k}"] = float((r <= k).mean()) if r.size else None
    out[f"mrr@{mrr_k}"] = float(np.where(r <= mrr_k, 1.0 / np.maximum(r, 1), 0.0).mean()) if r.size else None
    return out


def by_task(query_ranks: np.ndarray, tasks: Sequence[str], ks: Sequence[int], mrr_k: int) -> dict[str, dict]:
    """{"all": summary, <task>: summary, ...} for the tasks present."""
    r = np.asarray(query_ranks, dtype=np.int64)
    out = {"all": summarise(r, ks, mrr_k)}
    labels = np.asarray(list(tasks), dtype=object)
    for task in sorted(set(labels.tolist())):
        out[task] = summarise(r[labels == task], ks, mrr_k)
    return out
