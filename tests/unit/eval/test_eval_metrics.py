"""Retrieval metrics against hand-computed rankings: ties, empty pools, k larger than the pool."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import EvalError
from pipeline.eval.metrics import by_task, ranks, summarise


def test_ranks_count_candidates_scoring_at_least_the_positive():
    scores = np.array([[0.9, 0.1, 0.5],   # positive 0: nothing above -> rank 1
                       [0.9, 0.1, 0.5],   # positive 1: two above -> rank 3
                       [0.2, 0.7, 0.4]])  # positive 2: one above -> rank 2
    assert ranks(scores, [0, 1, 2]).tolist() == [1, 3, 2]


def test_a_tie_with_the_positive_counts_against_it():
    # Everything scored alike (an untrained model): the positive ranks last, not first.
    assert ranks(np.zeros((1, 4)), [2]).tolist() == [4]
    assert ranks(np.array([[0.5, 0.5, 0.1]]), [0]).tolist() == [2]


def test_recall_and_mrr_match_hand_computed_values():
    out = summarise(np.array([1, 3, 2, 12]), ks=(1, 5, 10), mrr_k=10)
    assert out["queries"] == 4
    assert out["recall@1"] == pytest.approx(0.25)
    assert out["recall@5"] == pytest.approx(0.75)
    assert out["recall@10"] == pytest.approx(0.75)
    # 1/1 + 1/3 + 1/2 + 0 (rank 12 is past the cut-off), over 4 queries.
    assert out["mrr@10"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 4)


def test_k_larger_than_the_pool_finds_every_positive():
    r = ranks(np.array([[0.1, 0.9], [0.9, 0.1]]), [0, 1])
    assert summarise(r, ks=(1, 50), mrr_k=100)["recall@50"] == 1.0
    assert summarise(r, ks=(1, 50), mrr_k=100)["recall@1"] == 0.0


def test_an_empty_pool_is_an_error_and_no_queries_give_no_numbers():
    with pytest.raises(EvalError, match="not in the pool"):
        ranks(np.zeros((2, 0)), [0, 0])
    with pytest.raises(EvalError, match="not in the pool"):
        ranks(np.zeros((1, 3)), [3])
    out = summarise(ranks(np.zeros((0, 5)), []), ks=(1,), mrr_k=10)
    assert out == {"queries": 0, "recall@1": None, "mrr@10": None}


def test_by_task_splits_the_queries_by_task_type():
    out = by_task(np.array([1, 2, 1, 7]), ["it2t", "it2t", "it2it", "it2it"], ks=(1,), mrr_k=10)
    assert out["all"]["recall@1"] == pytest.approx(0.5)
    assert out["it2t"] == {"queries": 2, "recall@1": 0.5, "mrr@10": pytest.approx(0.75)}
    assert out["it2it"]["recall@1"] == 1 / 2 and out["it2it"]["mrr@10"] == pytest.approx((1 + 1 / 7) / 2)
