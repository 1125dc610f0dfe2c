"""pipeline/exporters/view.py: the one Parquet schema check of the GME and MegaPairs readers."""

from __future__ import annotations

import pyarrow as pa

from pipeline.exporters.view import Problems, check_parquet_schema

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
HF = {b"huggingface": b"{}"}


def check(schema: pa.Schema) -> tuple[bool, list[str]]:
    problems = Problems()
    ok = check_parquet_schema(schema, "f", problems, "MegaPairs", ("id", "q_img", "hns"), ("q_img",), ("hns",),
                              one_of=("q_text", "q_texts"))
    return ok, problems.first


def test_a_schema_with_every_column_as_an_image_struct_passes():
    schema = pa.schema([("id", pa.string()), ("q_img", IMAGE), ("hns", pa.list_(IMAGE)),
                        ("q_texts", pa.list_(pa.string()))], metadata=HF)
    assert check(schema) == (True, [])


def test_a_schema_with_none_of_the_one_of_columns_is_rejected_naming_them():
    schema = pa.schema([("id", pa.string()), ("q_img", IMAGE), ("hns", pa.list_(IMAGE))], metadata=HF)
    assert check(schema) == (False, ["f: missing MegaPairs column(s) ['q_text', 'q_texts']"])


def test_image_columns_that_are_not_structs_are_rejected_and_missing_metadata_only_reported():
    schema = pa.schema([("id", pa.string()), ("q_img", pa.binary()), ("hns", pa.list_(pa.string())),
                        ("q_text", pa.list_(pa.string()))])
    ok, problems = check(schema)
    bad = "f: column(s) ['q_img', 'hns'] are not HF image structs {bytes, path} (or lists of them)"
    assert (ok, problems[0]) == (False, bad)
    assert problems[1].startswith("f: no `huggingface` features metadata")
