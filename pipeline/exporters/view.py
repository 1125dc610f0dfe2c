"""One shape for every export format as `fusegen validate` reads it back: triplets of candidates.

Each format's `read(root, problems)` parses its files the way the consuming project's loader does
(field names, list shapes, image path resolution), records schema problems in `problems`, and yields
`Triplet`s; the validator's content checks then run the same way for every format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.stages.export import is_image_struct


@dataclass(frozen=True)
class Img:
    """An image as the loader finds it: inline bytes (GME Parquet) or a file path."""

    where: str
    data: bytes | None = None
    path: str | None = None

    @classmethod
    def at(cls, root: str, rel: str, where: str) -> Img:
        """A path as the loaders resolve it: absolute as is, relative against the export's root."""
        return cls(where, path=rel if os.path.isabs(rel) else os.path.join(root, rel))

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            return f.read()


@dataclass(frozen=True)
class Candidate:
    doc_id: str | None
    text: str
    image: Img | None


@dataclass(frozen=True)
class Triplet:
    id: str | None
    split: str
    query_text: str
    query_image: Img | None
    pos: Candidate
    negs: list[Candidate]
    where: str
    # What must not span two splits: the query image for MegaPairs rows (their `query_id`); None:
    # the positive's doc id (GME: the passage).
    group: str | None = None


class Problems:
    """Violations found so far: every one counted, the first `cap` kept with where they are."""

    def __init__(self, cap: int = 20) -> None:
        self.cap, self.count, self.first = cap, 0, []

    def add(self, where: str, message: str) -> None:
        self.count += 1
        if len(self.first) < self.cap:
            self.first.append(f"{where}: {message}")

    def json_line(self, line: str, where: str) -> dict | None:
        """A JSONL record, or None (and a problem) when the line is not a JSON object."""
        if not line.strip():
            return None
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            self.add(where, f"not valid JSON ({exc.msg})")
            return None
        if not isinstance(value, dict):
            self.add(where, "not a JSON object")
            return None
        return value

    def __bool__(self) -> bool:
        return self.count > 0


# -- the run's export Parquet (GME and MegaPairs runs) --------------------------------------------------


def inline_image(struct: dict | None, where: str) -> Img | None:
    """An HF image struct `{bytes, path}` read from Parquet as the loader finds it (None stays None)."""
    return None if struct is None else Img(where, data=struct.get("bytes") or b"")


def check_parquet_schema(
    schema: pa.Schema, where: str, problems: Problems, label: str, required: tuple[str, ...],
    image_columns: tuple[str, ...], image_list_columns: tuple[str, ...], one_of: tuple[str, ...] = (),
) -> bool:
    """Whether a Parquet file of `label` triplets can be read: every `required` column and one of `one_of`
    (when given) present, image columns HF image structs and image-list columns lists of them. Missing
    `huggingface` features metadata is a problem but the rows are still read."""
    missing = [c for c in required if c not in schema.names]
    if missing or (one_of and not any(f in schema.names for f in one_of)):
        problems.add(where, f"missing {label} column(s) {missing or list(one_of)}")
        return False
    bad = [c for c in image_columns if not is_image_struct(schema.field(c).type)]
    bad += [c for c in image_list_columns if not (pa.types.is_list(schema.field(c).type)
                                                  and is_image_struct(schema.field(c).type.value_type))]
    if bad:
        problems.add(where, f"column(s) {bad} are not HF image structs {{bytes, path}} (or lists of them)")
    if b"huggingface" not in (schema.metadata or {}):
        problems.add(where, "no `huggingface` features metadata: `datasets` would not decode the images")
    return not bad


def parquet_rows(
    folder: str, prefix: str, problems: Problems, check: Callable[[pa.Schema, str, Problems], bool]
) -> Iterator[tuple[str, str, dict]]:
    """(split, where, row) for every row of `folder/*.parquet` in name order, the split the file name's
    prefix (`train-*.parquet`); a file whose schema fails `check` is skipped. `prefix` is how `where`
    names the folder."""
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".parquet"):
            continue
        pf = pq.ParquetFile(os.path.join(folder, name))
        if not check(pf.schema_arrow, f"{prefix}/{name}", problems):
            continue
        no = 0
        for batch in pf.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield name.split("-", 1)[0], f"{prefix}/{name}#row{no}", row
                no += 1
