"""Fixtures for the exporter tests: a finished GME run (real PNGs, train + validation) and its rows."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.io.fs import RunFS
from pipeline.io.image_store import ImageStore
from tests.support.gme_run import export_rows, make_gme_run, upstream_rows


@pytest.fixture(scope="module")
def gme_run(tmp_path_factory):
    """8 it2it triplets over 6 passages, 3 negatives each, ~40% of the passages in validation."""
    return make_gme_run(tmp_path_factory.mktemp("gme"), rows=8, negatives=3, validation_ratio=0.4, task="it2it")


@pytest.fixture(scope="module")
def it2t_run(tmp_path_factory):
    return make_gme_run(tmp_path_factory.mktemp("it2t"), rows=8, negatives=3, validation_ratio=0.4, task="it2t")


@pytest.fixture(scope="module")
def ragged_run(tmp_path_factory):
    """Rows with 3, 1 and 0 negatives (the negatives stage found fewer for some queries)."""
    root = tmp_path_factory.mktemp("ragged")
    table = upstream_rows(ImageStore(RunFS.from_uri(str(root / "run"))), n=6, negatives=3)
    rows = table.to_pylist()
    for i, keep in ((1, 1), (2, 0), (4, 1)):
        for name in ("neg_ids", "neg_doc_ids", "neg_texts", "neg_titles", "neg_images", "neg_scores", "neg_ranks"):
            rows[i][name] = rows[i][name][-keep:] if keep else []
    return make_gme_run(root, validation_ratio=0.0, upstream=pa.Table.from_pylist(rows, schema=table.schema))


@pytest.fixture(scope="module")
def gme_rows(gme_run) -> dict[str, dict]:
    """id -> exported GME row (with its split), the reference every format is compared against."""
    return {r["id"]: {**r, "split": split} for split, rows in export_rows(gme_run).items() for r in rows}


@pytest.fixture
def offline_hf(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return str(tmp_path / "hf-cache")
