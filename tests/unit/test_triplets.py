"""pipeline/triplets.py: the doc-level split is a function of the doc id alone (Hypothesis properties)."""

from __future__ import annotations

import itertools

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.io.image_store import IMAGE_REF
from pipeline.stage import SPLIT
from pipeline.stages.export import ExportConfig, gme_batch
from pipeline.triplets import split_of

REF = {"sha256": "a" * 64, "width": 2, "height": 2, "format": "png"}
doc_ids = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=40)
ratios = st.floats(min_value=0.0, max_value=0.99)
seeds = st.integers(min_value=0, max_value=2**31)


def rows(docs: list[str]) -> pa.Table:
    """Minimal upstream rows, one query per entry (a doc id may repeat: several queries per passage)."""
    n = len(docs)
    return pa.table({
        "id": [f"r{i}" for i in range(n)], "doc_id": docs, "text": [f"passage {d}" for d in docs],
        "rewritten_query": ["what is this?"] * n, "query_image": pa.array([REF] * n, IMAGE_REF),
        "neg_doc_ids": pa.array([[] for _ in docs], pa.list_(pa.string())),
        "neg_texts": pa.array([[] for _ in docs], pa.list_(pa.string())),
        "neg_images": pa.array([[] for _ in docs], pa.list_(IMAGE_REF)),
    })


@settings(max_examples=60, deadline=None)
@given(docs=doc_ids, ratio=ratios, seed=seeds, cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=6))
def test_no_doc_id_lands_in_both_splits_however_the_rows_are_cut_into_blocks(docs, ratio, seed, cuts):
    config = ExportConfig(validation_ratio=ratio, split_seed=seed)
    table = rows(docs)
    bounds = sorted({0, len(docs), *(c for c in cuts if c < len(docs))})
    seen: dict[str, set[str]] = {}
    for start, stop in itertools.pairwise(bounds):
        block = gme_batch(table.slice(start, stop - start), config)
        for doc, split in zip(block["doc_id"].to_pylist(), block[SPLIT].to_pylist()):
            seen.setdefault(doc, set()).add(split)
    whole = gme_batch(table, config)
    assert all(len(s) == 1 for s in seen.values())
    assert {d: s.pop() for d, s in seen.items()} == dict(zip(whole["doc_id"].to_pylist(), whole[SPLIT].to_pylist()))


@settings(max_examples=60, deadline=None)
@given(docs=doc_ids, low=ratios, high=ratios, seed=seeds)
def test_raising_the_ratio_only_moves_docs_into_validation(docs, low, high, seed):
    low, high = sorted((low, high))
    moved_back = [d for d in docs if split_of(d, low, seed) == "validation" and split_of(d, high, seed) == "train"]
    assert moved_back == []


@given(docs=doc_ids, seed=seeds)
def test_a_zero_ratio_puts_every_doc_in_train(docs, seed):
    assert {split_of(d, 0.0, seed) for d in docs} == {"train"}


def test_the_validation_share_is_near_the_ratio_over_many_docs():
    share = sum(split_of(f"doc-{i}", 0.2, 7) == "validation" for i in range(20_000)) / 20_000
    assert abs(share - 0.2) < 0.01


def test_another_seed_draws_another_split():
    docs = [f"doc-{i}" for i in range(200)]
    assert [split_of(d, 0.5, 1) for d in docs] != [split_of(d, 0.5, 2) for d in docs]
