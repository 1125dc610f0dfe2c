"""GME fused triplets as the run wrote them: `OUT/data/{train,validation}-*.parquet` (+ the card).

The run's export Parquet already is the format (DESIGN §4: images inline as HF image structs, so
`datasets.load_dataset("parquet", data_dir=OUT/data)` yields PIL images); exporting copies the files
(hard links on one disk) and the dataset card if `fusegen card` wrote one. Reading back iterates the
rows with their inline image bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa

from pipeline.exporters.outdir import OutDir
from pipeline.exporters.source import RunSource
from pipeline.exporters.view import (
    Candidate,
    Problems,
    Triplet,
    check_parquet_schema,
    inline_image,
    parquet_rows,
)
from pipeline.triplets import GME_COLUMNS, IMAGE_COLUMNS, IMAGE_LIST_COLUMNS

DATA = "data"


def write(source: RunSource, out: OutDir) -> dict:
    counts: dict[str, dict] = {}
    for split, files in source.splits.items():
        rows = 0
        for rel in files:
            out.copy(source.run_fs.fs, source.run_fs.path(rel), f"{DATA}/{rel.rsplit('/', 1)[-1]}")
            rows += source.run_fs.parquet_rows(rel)
        counts[split] = {"read": rows, "written": rows}
    if source.run_fs.exists("export/README.md"):
        out.copy(source.run_fs.fs, source.run_fs.path("export/README.md"), "README.md")
    return counts


def check_schema(schema: pa.Schema, where: str, problems: Problems) -> bool:
    return check_parquet_schema(schema, where, problems, "GME", GME_COLUMNS, IMAGE_COLUMNS, IMAGE_LIST_COLUMNS)


def read(root: str, problems: Problems) -> Iterator[Triplet]:
    for split, where, row in parquet_rows(os.path.join(root, DATA), DATA, problems, check_schema):
        negs = [
            Candidate(d, t, inline_image(i, where))
            for d, t, i in zip(row["neg_doc_ids"] or [], row["neg_texts"] or [], row["neg_images"] or [])
        ]
        if not (len(row["neg_doc_ids"] or []) == len(row["neg_texts"] or []) == len(row["neg_images"] or [])):
            problems.add(where, "neg_doc_ids, neg_texts and neg_images differ in length")
        pos = Candidate(row["doc_id"], row["pos_text"] or "", inline_image(row["pos_image"], where))
        yield Triplet(row["id"], split, row["query_text"] or "", inline_image(row["query_image"], where),
                      pos, negs, where)
