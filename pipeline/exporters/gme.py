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
import pyarrow.parquet as pq

from pipeline.exporters.outdir import OutDir
from pipeline.exporters.source import RunSource
from pipeline.exporters.view import Candidate, Img, Problems, Triplet
from pipeline.stages.export import is_image_struct
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


def _image(struct: dict | None, where: str) -> Img | None:
    return None if struct is None else Img(where, data=struct.get("bytes") or b"")


def check_schema(schema: pa.Schema, where: str, problems: Problems) -> bool:
    missing = [c for c in GME_COLUMNS if c not in schema.names]
    if missing:
        problems.add(where, f"missing GME column(s) {missing}")
        return False
    bad = [c for c in IMAGE_COLUMNS if not is_image_struct(schema.field(c).type)]
    bad += [c for c in IMAGE_LIST_COLUMNS if not (pa.types.is_list(schema.field(c).type)
                                                  and is_image_struct(schema.field(c).type.value_type))]
    if bad:
        problems.add(where, f"column(s) {bad} are not HF image structs {{bytes, path}} (or lists of them)")
    if b"huggingface" not in (schema.metadata or {}):
        problems.add(where, "no `huggingface` features metadata: `datasets` would not decode the images")
    return not bad


def read(root: str, problems: Problems) -> Iterator[Triplet]:
    folder = os.path.join(root, DATA)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".parquet"):
            continue
        split = name.split("-", 1)[0]
        pf = pq.ParquetFile(os.path.join(folder, name))
        if not check_schema(pf.schema_arrow, f"{DATA}/{name}", problems):
            continue
        no = 0
        for batch in pf.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                where = f"{DATA}/{name}#row{no}"
                no += 1
                negs = [
                    Candidate(d, t, _image(i, where))
                    for d, t, i in zip(row["neg_doc_ids"] or [], row["neg_texts"] or [], row["neg_images"] or [])
                ]
                if not (len(row["neg_doc_ids"] or []) == len(row["neg_texts"] or []) == len(row["neg_images"] or [])):
                    problems.add(where, "neg_doc_ids, neg_texts and neg_images differ in length")
                pos = Candidate(row["doc_id"], row["pos_text"] or "", _image(row["pos_image"], where))
                yield Triplet(row["id"], split, row["query_text"] or "", _image(row["query_image"], where),
                              pos, negs, where)
