"""The GME fused triplet (DESIGN §4): its columns, `to_gme_rows` and the doc-level train/validation split.

`to_gme_rows` turns the rows the `negatives` stage hands over (one query with its image, its positive
passage and its mined negatives) into one triplet row each:

    id, task, instruction, query_text, query_image, pos_text, pos_title, pos_image,
    neg_texts, neg_images, neg_doc_ids, doc_id, entity, entity_type, image_source, image_origin,
    image_license, scores {consistency_rank int32, clip float32, gme_pos float32, gme_negs list<float32>}

`image_origin` (URL, `pool:<id>`, `doc:<doc_id>` or the generator's model id) and `image_license` keep
the query image's provenance with the row, so a published dataset can honour per-image licenses.

`query_text` is the entity-masked rewrite (the original query names the entity the image shows).
Candidate texts are what GME encodes for a passage: `title + " " + text` when it has a title (GME's
released inference code), so `pos_text` / `neg_texts` hold that and `pos_title` keeps the title alone.
For `it2t` the candidates are text only (`pos_image` null, `neg_images` all null, still one per
negative): the query image is often the passage's own picture, and a candidate carrying it would be
found by image matching alone. `it2it` keeps each passage's own image on its candidate. Negatives
are ordered by `neg_ranks` (hardest first) when that column exists.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.image_store import IMAGE_REF

TASKS = ("it2t", "it2it")
# Columns a GME export cannot do without; the others (scores, entity, provenance, title, instruction)
# are null when the stage that makes them did not run.
GME_INPUTS = ("id", "doc_id", "text", "rewritten_query", "query_image", "neg_doc_ids", "neg_texts", "neg_images")
SCORES = pa.struct([
    ("consistency_rank", pa.int32()),
    ("clip", pa.float32()),
    ("gme_pos", pa.float32()),
    ("gme_negs", pa.list_(pa.float32())),
])
GME_COLUMNS = (
    "id", "task", "instruction", "query_text", "query_image", "pos_text", "pos_title", "pos_image",
    "neg_texts", "neg_images", "neg_doc_ids", "doc_id", "entity", "entity_type", "image_source", "image_origin",
    "image_license", "scores",
)
# Image columns of a triplet row: one image, or a list of them.
IMAGE_COLUMNS, IMAGE_LIST_COLUMNS = ("query_image", "pos_image"), ("neg_images",)
SPLITS = ("train", "validation")
NO_QUERY_IMAGE, MISALIGNED, POSITIVE_IN_NEGATIVES = (
    "filter:no_query_image", "error:negatives_misaligned", "error:positive_in_negatives",
)


def candidate_text(title: str | None, text: str | None) -> str:
    """The passage as GME encodes it: `title + " " + text` when it has a title."""
    title, text = (title or "").strip(), text or ""
    return f"{title} {text}" if title else text


def _column(table: pa.Table, name: str, tp: pa.DataType) -> pa.Array:
    if name in table.column_names:
        return table[name].combine_chunks().cast(tp)
    return pa.nulls(table.num_rows, tp)


def _negatives(row: dict, task: str) -> tuple[list, list, list, list]:
    """(doc ids, texts, images, scores) of one row's negatives, hardest first."""
    ids, texts = row["neg_doc_ids"] or [], row["neg_texts"] or []
    titles = row.get("neg_titles") or [None] * len(ids)
    images = row["neg_images"] or [None] * len(ids)
    scores = row.get("neg_scores") or [None] * len(ids)
    ranks = row.get("neg_ranks") or list(range(len(ids)))
    order = sorted(range(len(ids)), key=lambda i: (ranks[i] is None, ranks[i] if ranks[i] is not None else 0, i))
    return (
        [ids[i] for i in order],
        [candidate_text(titles[i], texts[i]) for i in order],
        [images[i] if task == "it2it" else None for i in order],
        [scores[i] for i in order],
    )


def _aligned(row: dict) -> bool:
    """Every negative list of the row has one item per negative doc id (null lists count as empty,
    except `neg_images` / scores / ranks / titles, which may be missing altogether)."""
    n = len(row["neg_doc_ids"] or [])
    if len(row["neg_texts"] or []) != n:
        return False
    others = [row["neg_images"], row.get("neg_titles"), row.get("neg_scores"), row.get("neg_ranks")]
    return all(v is None or len(v) == n for v in others)


def to_gme_rows(table: pa.Table, task: str = "it2t", instruction: str = "") -> pa.Table:
    """Upstream rows -> GME triplet rows, one for one (row i stays row i; columns starting with `_`
    are carried over). `instruction` fills rows without an `instruction` value. Rows `gme_row_problems`
    names keep their place, with empty negatives where those could not be read."""
    names = table.column_names
    keep = ["neg_doc_ids", "neg_texts", "neg_images"] + [
        c for c in ("neg_titles", "neg_scores", "neg_ranks") if c in names
    ]
    rows = table.select(keep).to_pylist()
    negs = [_negatives(r, task) if _aligned(r) else ([], [], [], []) for r in rows]
    titles = _column(table, "title", pa.string())
    texts = table["text"].to_pylist()
    pos_text = [candidate_text(t, x) for t, x in zip(titles.to_pylist(), texts)]
    given = _column(table, "instruction", pa.string())
    instructions = pc.if_else(pc.is_null(given), pa.scalar(instruction, pa.string()), given)
    own = _column(table, "image", IMAGE_REF)
    pos_image = own if task == "it2it" else pa.nulls(table.num_rows, IMAGE_REF)
    scores = pa.StructArray.from_arrays(
        [
            _column(table, "consistency_rank", pa.int32()),
            _column(table, "clip_score", pa.float32()),
            _column(table, "gme_pos_score", pa.float32()),
            pa.array([n[3] for n in negs], pa.list_(pa.float32())),
        ],
        fields=list(SCORES),
    )
    columns = {
        "id": table["id"].combine_chunks().cast(pa.string()),
        "task": pa.array([task] * table.num_rows, pa.string()),
        "instruction": instructions,
        "query_text": _column(table, "rewritten_query", pa.string()),
        "query_image": _column(table, "query_image", IMAGE_REF),
        "pos_text": pa.array(pos_text, pa.string()),
        "pos_title": titles,
        "pos_image": pos_image,
        "neg_texts": pa.array([n[1] for n in negs], pa.list_(pa.string())),
        "neg_images": pa.array([n[2] for n in negs], pa.list_(IMAGE_REF)),
        "neg_doc_ids": pa.array([n[0] for n in negs], pa.list_(pa.string())),
        "doc_id": _column(table, "doc_id", pa.string()),
        "entity": _column(table, "entity", pa.string()),
        "entity_type": _column(table, "entity_type", pa.string()),
        "image_source": _column(table, "image_source", pa.string()),
        "image_origin": _column(table, "image_origin", pa.string()),
        "image_license": _column(table, "image_license", pa.string()),
        "scores": scores,
    }
    internal = {c: table[c] for c in names if c.startswith("_")}
    return pa.table({**columns, **internal})


def gme_row_problems(upstream: pa.Table, rows: pa.Table) -> list[str]:
    """Per row: "" or the reason it cannot be a triplet (no query image, misaligned negative lists,
    its own passage among its negatives by doc id or by text)."""
    keep = [c for c in ("neg_doc_ids", "neg_texts", "neg_images", "neg_titles", "neg_scores", "neg_ranks")
            if c in upstream.column_names]
    raw = upstream.select(keep).to_pylist()
    out = []
    for r, image, doc, text in zip(
        raw, rows["query_image"].is_valid().to_pylist(), upstream["doc_id"].to_pylist(), upstream["text"].to_pylist()
    ):
        if not image:
            out.append(NO_QUERY_IMAGE)
        elif not _aligned(r):
            out.append(MISALIGNED)
        elif doc in (r["neg_doc_ids"] or []) or text in (r["neg_texts"] or []):
            out.append(POSITIVE_IN_NEGATIVES)
        else:
            out.append("")
    return out


def split_of(doc_id: str, ratio: float, seed: int) -> str:
    """"validation" when the seeded hash of `doc_id` falls under `ratio`, else "train".

    A function of the doc id alone: the same passage lands in the same split whatever the sharding,
    the block boundaries or the rerun, so no doc id is in both splits.
    """
    if ratio <= 0:
        return "train"
    digest = hashlib.blake2b(f"{seed}\x1f{doc_id}".encode(), digest_size=8).digest()
    return "validation" if int.from_bytes(digest, "big") / 2**64 < ratio else "train"
