"""The MegaPairs triplet (DESIGN §1b, §4): its columns, `megapairs_batch` and the square resize.

`to_megapairs_rows` turns the rows the `instruct` stage hands over (one mined (query image, target
image) pair with its description, its instructions and its mined hard negatives) into one row each:

    id, q_img, q_text (list<string>; `q_texts` with `text_field: q_texts`), t_img, hns (list<image>),
    query_id, target_id, hn_ids (list<string>, aligned with hns), pair_views, pair_scores, pair_rank,
    neg_scores, description, word_limit, description_mode, demo_ids, query_caption, target_caption,
    query_license, target_license, mine_seed, models (string: JSON {"<stage>.<role>": model id})

`hns` starts with the query image itself when `query_first` (the released data does: their Table 4,
query image plus mined negatives trains best), then the mined negatives in mined order; `hn_ids`
names each (the query's id first). `models` is the same on every row of a run: the model ids the
earlier sections' manifests record (the export stage reads them in `before_execute`), so a row keeps
which embedders, VLM and LLM made it. Rows go to train / validation by a seeded hash of `query_id`
(`split_of`), so all pairs of one query image sit in one split.

Problems (row dropped with a reason): `error:no_image` (query or target reference missing),
`error:negatives_misaligned` (neg_ids / neg_images / neg_scores of different lengths),
`error:target_in_negatives` (the target's id, or its image by sha256, among the negatives, or the
target is the query image itself), `filter:no_instructions` (empty list), `filter:contamination`
(an instruction overlaps the evaluation texts, when `export.contamination.eval_files` is set).

`as_triplets` turns one exported MegaPairs row into the GME-shaped rows the ms-swift and MMEB
exporters write (query image + instruction -> target image, `hns` as negatives).

`square_jpeg(size, mode)` is the transform `finish_part` applies while materialising images when
`image_size` is set: every image becomes a `size`x`size` RGB JPEG (`stretch`, as the released 512x512
data, or `crop`: centre crop keeping the aspect ratio).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pyarrow as pa

from pipeline.config import check
from pipeline.io.image_store import IMAGE_REF
from pipeline.stage import FILTERED, OK, REJECTED, SPLIT, check_columns, set_status
from pipeline.triplets import MISALIGNED, split_of

MP_INPUTS = (
    "id", "query_id", "query_image", "target_id", "target_image", "neg_ids", "neg_images", "instructions",
)
TEXT_FIELDS = ("q_text", "q_texts")
RESIZE_MODES = ("stretch", "crop")
MP_IMAGE_COLUMNS, MP_IMAGE_LIST_COLUMNS = ("q_img", "t_img"), ("hns",)
NO_IMAGE, TARGET_IN_NEGATIVES, NO_INSTRUCTIONS = "error:no_image", "error:target_in_negatives", "filter:no_instructions"
CONTAMINATION = "filter:contamination"
# Columns an exporter needs in a megapairs run's Parquet (besides q_text or q_texts).
MP_REQUIRED = ("id", "q_img", "t_img", "hns", "query_id", "target_id", "hn_ids")
# Rows per pair an exporter writes for ms-swift / MMEB: the first instruction, or every one.
INSTRUCTION_MODES = ("first", "all")


@dataclass(frozen=True)
class MegaPairsExportConfig:
    """`export.megapairs:` the MegaPairs triplet's options (used with `export.schema: megapairs`)."""

    # hns[0] is the query image itself, then the mined negatives (as the released data).
    query_first: bool = True
    # Name of the instruction-list column: loaders disagree (`q_text` in the data card, `q_texts` elsewhere).
    text_field: str = "q_text"
    # Every image re-encoded as a square JPEG of this side (512 as the released data); null = as stored.
    image_size: int | None = None
    # stretch: resize to the square (aspect ratio lost, as the released data); crop: centre crop.
    resize_mode: str = "stretch"
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        check(self.text_field in TEXT_FIELDS, "export.megapairs", "text_field",
              f"must be one of {', '.join(TEXT_FIELDS)} (got {self.text_field!r})")
        check(self.image_size is None or 16 <= self.image_size <= 4096, "export.megapairs", "image_size",
              f"must be null or within 16..4096 (got {self.image_size})")
        check(self.resize_mode in RESIZE_MODES, "export.megapairs", "resize_mode",
              f"must be one of {', '.join(RESIZE_MODES)} (got {self.resize_mode!r})")
        check(1 <= self.jpeg_quality <= 100, "export.megapairs", "jpeg_quality",
              f"must be within 1..100 (got {self.jpeg_quality})")


def mp_columns(text_field: str = "q_text") -> tuple[str, ...]:
    return (
        "id", "q_img", text_field, "t_img", "hns", "query_id", "target_id", "hn_ids", "pair_views", "pair_scores",
        "pair_rank", "neg_scores", "description", "word_limit", "description_mode", "demo_ids", "query_caption",
        "target_caption", "query_license", "target_license", "mine_seed", "models",
    )


MP_COLUMNS = mp_columns()
_CARRIED = {
    "pair_views": pa.list_(pa.string()), "pair_scores": pa.list_(pa.float32()), "pair_rank": pa.int32(),
    "neg_scores": pa.list_(pa.float32()), "description": pa.string(), "word_limit": pa.int32(),
    "description_mode": pa.string(), "demo_ids": pa.list_(pa.string()), "query_caption": pa.string(),
    "target_caption": pa.string(), "query_license": pa.string(), "target_license": pa.string(),
    "mine_seed": pa.int64(),
}


def _column(table: pa.Table, name: str, tp: pa.DataType) -> pa.Array:
    if name in table.column_names:
        return table[name].combine_chunks().cast(tp)
    return pa.nulls(table.num_rows, tp)


def _aligned(ids: list | None, images: list | None, scores: list | None) -> bool:
    n = len(ids or [])
    return len(images or []) == n and (scores is None or len(scores) == n)


def to_megapairs_rows(table: pa.Table, cfg: MegaPairsExportConfig, models: str | None = None) -> pa.Table:
    """Upstream rows -> MegaPairs rows, one for one (columns starting with `_` carried over). A row
    with misaligned negative lists keeps its place with empty `hns` / `hn_ids` beyond the query."""
    raw = table.select(["query_id", "query_image", "neg_ids", "neg_images"]).to_pylist()
    scores = _column(table, "neg_scores", pa.list_(pa.float32())).to_pylist()
    hns, hn_ids = [], []
    for r, s in zip(raw, scores):
        ok = _aligned(r["neg_ids"], r["neg_images"], s)
        ids, images = (list(r["neg_ids"] or []), list(r["neg_images"] or [])) if ok else ([], [])
        if cfg.query_first:
            ids, images = [r["query_id"], *ids], [r["query_image"], *images]
        hns.append(images)
        hn_ids.append(ids)
    texts = [list(v or []) for v in table["instructions"].to_pylist()]
    columns = {
        "id": table["id"].combine_chunks().cast(pa.string()),
        "q_img": _column(table, "query_image", IMAGE_REF),
        cfg.text_field: pa.array(texts, pa.list_(pa.string())),
        "t_img": _column(table, "target_image", IMAGE_REF),
        "hns": pa.array(hns, pa.list_(IMAGE_REF)),
        "query_id": _column(table, "query_id", pa.string()),
        "target_id": _column(table, "target_id", pa.string()),
        "hn_ids": pa.array(hn_ids, pa.list_(pa.string())),
        **{name: _column(table, name, tp) for name, tp in _CARRIED.items()},
        "models": pa.array([models] * table.num_rows, pa.string()),
    }
    internal = {c: table[c] for c in table.column_names if c.startswith("_")}
    return pa.table({**columns, **internal})


def megapairs_problems(table: pa.Table) -> list[str]:
    """Per upstream row: "" or the reason it cannot be a MegaPairs triplet."""
    raw = table.select(["query_id", "query_image", "target_id", "target_image", "neg_ids", "neg_images",
                        "instructions"]).to_pylist()
    scores = _column(table, "neg_scores", pa.list_(pa.float32())).to_pylist()
    out = []
    for r, s in zip(raw, scores):
        query, target = r["query_image"], r["target_image"]
        if query is None or target is None:
            out.append(NO_IMAGE)
        elif not _aligned(r["neg_ids"], r["neg_images"], s):
            out.append(MISALIGNED)
        elif (r["target_id"] in (r["neg_ids"] or []) or target["sha256"] == query["sha256"]
              or target["sha256"] in {n["sha256"] for n in r["neg_images"] or [] if n is not None}):
            out.append(TARGET_IN_NEGATIVES)
        elif not [t for t in r["instructions"] or [] if t and t.strip()]:
            out.append(NO_INSTRUCTIONS)
        else:
            out.append("")
    return out


def megapairs_batch(table: pa.Table, cfg: MegaPairsExportConfig, validation_ratio: float, split_seed: int,
                    eval_set=None, models: str | None = None, store=None) -> pa.Table:
    """megapairs: upstream rows -> triplet rows with `_status` / `_reason` and `_split` (one for one);
    image columns still hold references (`finish_part` materialises, and resizes, the kept rows')."""
    check_columns("export", MP_INPUTS, table.column_names)
    rows = to_megapairs_rows(table, cfg, models)
    reasons = megapairs_problems(table)
    if eval_set is not None:
        texts = rows[cfg.text_field].to_pylist()
        reasons = [r or (CONTAMINATION if any(eval_set.contaminated(t) for t in ts or []) else "")
                   for r, ts in zip(reasons, texts)]
        if store is not None and eval_set.checks_images:
            from pipeline.text.contamination_images import rows_with_near_duplicates

            hits = rows_with_near_duplicates(table, ("query_image", "target_image", "neg_images"), store, eval_set,
                                             reasons)
            reasons = [r or (CONTAMINATION if hit else "") for r, hit in zip(reasons, hits)]
    statuses = [OK if not r else FILTERED if r.startswith("filter:") else REJECTED for r in reasons]
    splits = [split_of(str(q), validation_ratio, split_seed) for q in table["query_id"].to_pylist()]
    rows = rows.append_column(SPLIT, pa.array(splits, pa.string()))
    return set_status(rows, statuses, reasons)


def as_triplets(row: dict, text_field: str = "q_text", instructions: str = "first", query_negative: bool = True,
                candidate_text: str = "") -> list[dict]:
    """One MegaPairs row -> GME-shaped rows (query_text = an instruction, pos = the target image)."""
    texts = [t for t in row.get(text_field) or [] if t and t.strip()]
    texts = texts[:1] if instructions == "first" else texts
    pairs = [(h, i) for h, i in zip(row["hn_ids"] or [], row["hns"] or [])
             if query_negative or h != row["query_id"]]
    base = {
        "doc_id": row["target_id"], "query_id": row["query_id"], "instruction": None, "query_image": row["q_img"],
        "pos_text": candidate_text, "pos_image": row["t_img"], "neg_doc_ids": [h for h, _ in pairs],
        "neg_texts": [candidate_text] * len(pairs), "neg_images": [i for _, i in pairs],
    }
    if instructions == "first":
        return [{**base, "id": row["id"], "query_text": t} for t in texts]
    return [{**base, "id": f"{row['id']}#{k}", "query_text": t} for k, t in enumerate(texts)]


def run_models(manifests: list[dict]) -> str:
    """The model ids the sections before export recorded, as the `models` column's JSON."""
    models = {f"{m['stage']}.{role}": str(identity) for m in manifests if m.get("stage") != "export"
              for role, identity in (m.get("models") or {}).items()}
    return json.dumps(models, sort_keys=True, ensure_ascii=False)


def square_jpeg(size: int, mode: str = "stretch", quality: int = 95):
    """A transform for `materialise_images`: image bytes -> (size x size RGB JPEG bytes, "jpg")."""

    def transform(data: bytes) -> tuple[bytes, str]:
        from PIL import Image, ImageOps

        from pipeline.io.images import decode_image

        # The one loader: allowed formats only, EXIF orientation, first frame, RGB (ImageError otherwise).
        img = decode_image(data)
        if mode == "crop":
            img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
        else:
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        return buf.getvalue(), "jpg"

    return transform
