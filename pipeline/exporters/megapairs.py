"""MegaPairs' released layout: `OUT/annotation/<split>.jsonl` plus `OUT/images/`, and its reader.

One line per triplet, as the released data (BAAI/MegaPairs data card; DESIGN §1b):

    q_img    "images/ab/<sha256[:32]>.jpg"       the query image, path relative to OUT
    q_text   ["instruction", ...]                 (`q_texts` when the run wrote `text_field: q_texts`)
    t_img    "images/..."                         the target image
    hns      ["images/...", ...]                  hard negatives as the run wrote them (query first
                                                  when `query_first`), never the target

plus `id`, `query_id`, `target_id` and `hn_ids` (loaders ignore them; `fusegen validate` reads them).
Images are the run's bytes (already square JPEGs when the run set `export.megapairs.image_size`),
each written once under a content-addressed name. Splits: `annotation/train.jsonl`,
`annotation/validation.jsonl` (by query image, as the run split them).

ms-swift and MMEB take MegaPairs rows through `as_triplets` (pipeline/triplets_megapairs.py):
query = query image + instruction, positive = the target image (with `candidate_text`), negatives =
`hns` (the query image itself left out with `query_negative=False`); `instructions="first"` gives
one row per pair (its first instruction), `"all"` one per (pair, instruction) with ids `<id>#<k>`.
`read(root)` reads back this layout or a megapairs run's `data/*.parquet` for `fusegen validate`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.exporters.outdir import OutDir
from pipeline.exporters.source import RunSource
from pipeline.exporters.view import (
    Candidate,
    Img,
    Problems,
    Triplet,
    check_parquet_schema,
    inline_image,
    parquet_rows,
)
from pipeline.triplets_megapairs import MP_IMAGE_COLUMNS, MP_IMAGE_LIST_COLUMNS, MP_REQUIRED, TEXT_FIELDS

ANNOTATION, DATA = "annotation", "data"


def record(row: dict, text_field: str, out: OutDir) -> dict:
    return {
        "q_img": out.image(row["q_img"]), text_field: list(row[text_field] or []), "t_img": out.image(row["t_img"]),
        "hns": [out.image(i) for i in row["hns"] or []],
        "id": row["id"], "query_id": row["query_id"], "target_id": row["target_id"], "hn_ids": list(row["hn_ids"] or []),
    }


def write(source: RunSource, out: OutDir) -> dict:
    counts = {}
    for split in source.splits:
        records = (record(r, source.text_field, out) for r in source.rows(split))
        written = out.write_lines(f"{ANNOTATION}/{split}.jsonl", records)
        counts[split] = {"read": written, "written": written}
    return counts


# -- reading back (fusegen validate) ---------------------------------------------------------------


def _triplet(row: dict, split: str, where: str, image, problems: Problems) -> Triplet | None:
    field = next((f for f in TEXT_FIELDS if f in row), None)
    texts = row.get(field) if field else None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        problems.add(where, f"q_text / q_texts must be a non-empty list of non-empty strings (got {texts!r:.80})")
        return None
    hns = row.get("hns")
    if not isinstance(hns, list) or row.get("q_img") is None or row.get("t_img") is None:
        problems.add(where, "q_img and t_img must be images and hns a list of them")
        return None
    ids = row.get("hn_ids") or [None] * len(hns)
    if len(ids) != len(hns):
        problems.add(where, f"hn_ids holds {len(ids)} ids for {len(hns)} hns")
        ids = [None] * len(hns)
    negs = [Candidate(h, "", image(i, where)) for h, i in zip(ids, hns)]
    pos = Candidate(row.get("target_id"), "", image(row["t_img"], where))
    group = row.get("query_id") or (row["q_img"] if isinstance(row["q_img"], str) else None)
    return Triplet(row.get("id"), split, texts[0], image(row["q_img"], where), pos, negs, where, group)


def _read_annotation(root: str, problems: Problems) -> Iterator[Triplet]:
    folder = os.path.join(root, ANNOTATION)
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".jsonl"):
            continue
        split = name[: -len(".jsonl")]

        def image(path, where: str) -> Img | None:
            if not isinstance(path, str) or not path:
                problems.add(where, f"image path must be a non-empty string (got {path!r:.60})")
                return None
            return Img.at(root, path, where)

        with open(os.path.join(folder, name), encoding="utf-8") as f:
            for no, line in enumerate(f, start=1):
                where = f"{ANNOTATION}/{name}:{no}"
                row = problems.json_line(line, where)
                if row is not None and (t := _triplet(row, split, where, image, problems)) is not None:
                    yield t


def _check_parquet(schema: pa.Schema, where: str, problems: Problems) -> bool:
    return check_parquet_schema(schema, where, problems, "MegaPairs", MP_REQUIRED, MP_IMAGE_COLUMNS,
                                MP_IMAGE_LIST_COLUMNS, one_of=TEXT_FIELDS)


def _read_parquet(root: str, problems: Problems) -> Iterator[Triplet]:
    for split, where, row in parquet_rows(os.path.join(root, DATA), DATA, problems, _check_parquet):
        if (t := _triplet(row, split, where, inline_image, problems)) is not None:
            yield t


def read(root: str, problems: Problems) -> Iterator[Triplet]:
    """The released layout (annotation/*.jsonl) when present, else a megapairs run's data/*.parquet."""
    if os.path.isdir(os.path.join(root, ANNOTATION)):
        yield from _read_annotation(root, problems)
    elif os.path.isdir(os.path.join(root, DATA)):
        yield from _read_parquet(root, problems)
    else:
        problems.add(root, f"neither {ANNOTATION}/*.jsonl nor {DATA}/*.parquet here")


def is_megapairs_parquet(folder: str) -> bool:
    """Whether `folder/data/*.parquet` (a run's export folder) holds MegaPairs triplets."""
    data = os.path.join(folder, DATA)
    names = sorted(n for n in os.listdir(data) if n.endswith(".parquet")) if os.path.isdir(data) else []
    return bool(names) and "q_img" in pq.read_schema(os.path.join(data, names[0])).names
