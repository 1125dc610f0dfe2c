"""The dataset card's MegaPairs section: pair counts, views, instructions per pair, example triplets.

Read from the export's Parquet (`export.schema: megapairs`: q_img, q_text | q_texts, t_img, hns,
pair_views, hn_ids, query_id), streaming only the small columns; examples read only the row groups
holding them (assets.pick_rows) and write thumbnails of the query, the target and one mined negative
(the first that is not the query image itself) under export/assets/.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow.parquet as pq

from pipeline.card.assets import _opening, _thumbnail, pick_rows
from pipeline.io.fs import RunFS
from pipeline.triplets_megapairs import TEXT_FIELDS

BATCH_ROWS = 1024


@dataclass(frozen=True)
class MegaPairsExample:
    id: str
    instruction: str
    more: int  # instructions beyond the one shown
    query: str | None  # thumbnail paths relative to export/
    target: str | None
    negative: str | None
    views: str


def is_megapairs(columns: list[str]) -> bool:
    return "q_img" in columns and "t_img" in columns and "hns" in columns


def megapairs_stats(run_fs: RunFS, splits: dict[str, list[str]]) -> dict:
    """pairs, query images, views (name, pairs, share), instructions per pair (n, pairs), negatives per
    pair, image licenses (query and target side, "unknown" where the pool named none)."""
    pairs, queries, views, per_pair, negatives, licenses = 0, set(), Counter(), Counter(), Counter(), Counter()
    for files in splits.values():
        for rel in files:
            with run_fs.fs.open_input_file(run_fs.path(rel)) as f:
                pf = pq.ParquetFile(f)
                names = pf.schema_arrow.names
                text = next((t for t in TEXT_FIELDS if t in names), None)
                wanted = [c for c in ("query_id", "pair_views", "hn_ids", "query_license", "target_license", text)
                          if c and c in names]
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
                    rows = batch.to_pylist()
                    pairs += len(rows)
                    for r in rows:
                        queries.add(r.get("query_id"))
                        views.update(r.get("pair_views") or [])
                        per_pair[len(r.get(text) or []) if text else 0] += 1
                        negatives[len(r.get("hn_ids") or [])] += 1
                        licenses.update(r.get(c) or "unknown" for c in ("query_license", "target_license"))
    total = pairs or 1
    return {
        "pairs": pairs,
        "queries": len(queries - {None}),
        "views": [(v, n, f"{n / total:.1%}") for v, n in sorted(views.items(), key=lambda kv: (-kv[1], kv[0]))],
        "instructions": sorted(per_pair.items()),
        "negatives": sorted(negatives.items()),
        "licenses": sorted(licenses.items(), key=lambda kv: (-kv[1], kv[0])),
    }


def megapairs_examples(run_fs: RunFS, files: list[str], k: int, seed: int) -> list[MegaPairsExample]:
    out = []
    for n, row in enumerate(pick_rows(run_fs, files, k, seed)):
        texts = next((row[t] for t in TEXT_FIELDS if t in row), None) or []
        negs = [i for h, i in zip(row.get("hn_ids") or [], row.get("hns") or []) if h != row.get("query_id")]
        thumbs = {}
        for role, image in (("query", row.get("q_img")), ("target", row.get("t_img")),
                            ("negative", negs[0] if negs else None)):
            data = _thumbnail(image)
            thumbs[role] = None
            if data is not None:
                thumbs[role] = f"assets/mp_example_{n}_{role}.jpg"
                run_fs.write_bytes(f"export/{thumbs[role]}", data)
        out.append(MegaPairsExample(
            id=str(row.get("id", n)), instruction=_opening(texts[0] if texts else ""), more=max(len(texts) - 1, 0),
            views=", ".join(row.get("pair_views") or []) or "—", **thumbs,
        ))
    return out
