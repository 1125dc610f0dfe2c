"""pipeline/io/corpus.py: the Parquet corpus reader under generated tables.

Hypothesis writes Parquet files whose columns have generated names (the corpus columns, names the
readers use internally, extras, duplicates) and types (right, wrong, nested, dictionary-encoded, strings
that are not UTF-8). Property: a file whose corpus columns have a wrong type, or appear twice, stops at
planning with a StageInputError naming the column, before any work; any other file reads back every row
once, and `ingest_batch` turns each into one row with a known status whose table writes as Parquet.
"""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.config import to_dict
from pipeline.errors import StageInputError
from pipeline.io.corpus import CorpusColumns, plan_corpus, read_parquet_corpus_shard
from pipeline.io.shards import tag_rows
from pipeline.stage import OK, REASON, REJECTED, STATUS
from pipeline.stages.ingest import IngestConfig, ingest_batch
from tests.support.ingest import INGEST_REASONS

COLS = CorpusColumns()
CONFIG = to_dict(IngestConfig(path="unused", max_chars=200))
TEXT_FIELDS = ("text", "title", "domain", "image_url")
STRING_KINDS = {"string", "large_string", "dictionary", "not_utf8", "null"}
# Which column types the reader must accept, per corpus column; every other pairing is a wrong type.
ACCEPTS = {
    **{field: STRING_KINDS for field in TEXT_FIELDS},
    "doc_id": STRING_KINDS | {"int64", "uint64", "int8"},
    "image": STRING_KINDS | {"binary", "large_binary", "image_struct", "odd_struct"},
}

VALID_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", " ", "a\x00b", "ok.png", "/dev/zero", "https://example.org/a.png"]
)
BINARY = st.binary(max_size=24) | st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"caf\xe9", b"\xed\xa0\x80"])


def nullable(values):
    return st.none() | values


def column(kind: str, rows: int) -> st.SearchStrategy[pa.Array]:
    """A generated Arrow array of `rows` values of one column kind."""
    values = {
        "string": (VALID_TEXT, pa.string()),
        "large_string": (VALID_TEXT, pa.large_string()),
        "dictionary": (VALID_TEXT, pa.string()),
        "not_utf8": (BINARY, pa.binary()),
        "null": (st.none(), pa.null()),
        "int64": (st.integers(-(2**63), 2**63 - 1), pa.int64()),
        "uint64": (st.integers(0, 2**64 - 1), pa.uint64()),
        "int8": (st.integers(-128, 127), pa.int8()),
        "float64": (st.floats(), pa.float64()),
        "bool": (st.booleans(), pa.bool_()),
        "binary": (BINARY, pa.binary()),
        "large_binary": (BINARY, pa.large_binary()),
        "list": (st.lists(VALID_TEXT, max_size=2), pa.list_(pa.string())),
        "timestamp": (st.datetimes(min_value=datetime.datetime(1970, 1, 1)), pa.timestamp("us")),
        "image_struct": (
            st.fixed_dictionaries({"bytes": nullable(BINARY), "path": nullable(VALID_TEXT)}),
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        ),
        "odd_struct": (
            st.fixed_dictionaries({"bytes": nullable(st.integers(0, 9))}),
            pa.struct([("bytes", pa.int64())]),
        ),
    }[kind]
    strategy, arrow_type = values
    lists = st.lists(nullable(strategy) if kind != "null" else strategy, min_size=rows, max_size=rows)

    def build(vals: list) -> pa.Array:
        arr = pa.array(vals, arrow_type)
        if kind == "dictionary":
            return arr.dictionary_encode()
        # A lax writer's strings: bytes that may not be UTF-8, typed as string without a check.
        return arr.view(pa.string()) if kind == "not_utf8" else arr

    return lists.map(build)


NAMES = st.sampled_from([*ACCEPTS, "other", "_where", "_raw", "_shard"])
KINDS = st.sampled_from(
    [
        "string",
        "large_string",
        "dictionary",
        "not_utf8",
        "null",
        "int64",
        "uint64",
        "int8",
        "float64",
        "bool",
        "binary",
        "large_binary",
        "list",
        "timestamp",
        "image_struct",
        "odd_struct",
    ]
)


def mostly(draw) -> bool:
    return draw(st.integers(0, 4)) > 0


@st.composite
def corpus_table(draw) -> tuple[list[str], list[str], list[pa.Array]]:
    """Mostly accepted schemas (so most examples reach ingest), sometimes a wrong type or a repeated name."""
    rows = draw(st.integers(0, 5))
    names = draw(st.lists(NAMES, min_size=1, max_size=5, unique=mostly(draw)))
    if mostly(draw):
        names = ["text", *(n for n in names if n != "text")]
    kinds = [
        draw(st.sampled_from(sorted(ACCEPTS[name]))) if name in ACCEPTS and mostly(draw) else draw(KINDS)
        for name in names
    ]
    return names, kinds, [draw(column(kind, rows)) for kind in kinds]


def problems(names: list[str], kinds: list[str]) -> set[str]:
    """The corpus columns the planner must refuse, by the rules stated in ACCEPTS (not by the code)."""
    bad = {name for name, kind in zip(names, kinds) if name in ACCEPTS and kind not in ACCEPTS[name]}
    return bad | {name for name in names if name in ACCEPTS and names.count(name) > 1}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parquet-fuzz")


@pytest.mark.timeout(120)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=corpus_table(), shard_rows=st.integers(1, 3))
@example(table=(["text", "title"], ["string", "float64"], [pa.array(["a"]), pa.array([1.5])]), shard_rows=1)
@example(table=(["text", "text"], ["string", "string"], [pa.array(["a"]), pa.array(["b"])]), shard_rows=1)
@example(
    table=(
        ["text", "_where"],
        ["not_utf8", "string"],
        [pa.array([b"\xe9", b"ok"]).view(pa.string()), pa.array(["x", "y"])],
    ),
    shard_rows=1,
)
def test_parquet_corpus_is_refused_naming_the_column_or_ingested_row_by_row(folder, table, shard_rows):
    names, kinds, arrays = table
    path = folder / "c.parquet"
    pq.write_table(pa.Table.from_arrays(arrays, names=names), path)
    refused = problems(names, kinds)
    rows = len(arrays[0])
    if refused or "text" not in names or rows == 0:
        with pytest.raises(StageInputError) as err:
            plan_corpus(str(path), COLS, shard_rows)
        message = str(err.value)
        assert any(f"column {name!r}" in message for name in refused) or (
            "no text column" in message if "text" not in names else "holds no records" in message
        ), message
        return
    specs = plan_corpus(str(path), COLS, shard_rows)
    for spec in specs:
        shard = tag_rows(read_parquet_corpus_shard(spec, None), spec.shard)
        out = ingest_batch(shard, CONFIG, str(folder / "run"))
        assert out.num_rows == shard.num_rows == spec.rows
        for status, reason in zip(out[STATUS].to_pylist(), out[REASON].to_pylist()):
            assert (status, reason) == (OK, "") or (status == REJECTED and reason in INGEST_REASONS), reason
        pq.write_table(out, io.BytesIO())
    assert sum(s.rows for s in specs) == rows
