"""Files the card embeds: score histograms (PNG, matplotlib) and example rows with thumbnails.

Examples are chosen with a seed from the first split, and only the row groups holding them are read,
so the cost does not grow with the dataset. Everything is written under `export/assets/`, whose paths
the card references relative to the export folder (as the Hub renders a README's images).
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from pipeline.card.stats import POS_IMAGE, POS_TEXT, QUERY_IMAGE, QUERY_TEXT, pick
from pipeline.io.fs import RunFS

ASSETS = "export/assets"
THUMB_PX = 160
OPENING_CHARS = 240


@dataclass(frozen=True)
class Example:
    id: str
    query: str
    image: str | None  # path relative to export/
    image_role: str  # "query image" | "passage image" | ""
    positive: str
    negative: str | None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")


def write_histograms(run_fs: RunFS, scores: dict[str, np.ndarray]) -> dict[str, str]:
    """One PNG per score; returns score name -> path relative to export/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for name, values in sorted(scores.items()):
        fig, ax = plt.subplots(figsize=(5, 2.6), dpi=100)
        integral = bool(len(values)) and np.all(values == np.round(values)) and np.ptp(values) <= 100
        bins = np.arange(values.min() - 0.5, values.max() + 1.5) if integral else 30
        ax.hist(values, bins=bins, color="#3b6ea5")
        ax.set_xlabel(name)
        ax.set_ylabel("rows" if not name.endswith("negs") else "negatives")
        ax.set_title(f"{name} (n={len(values)})", fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        rel = f"assets/score_{_slug(name)}.png"
        run_fs.write_bytes(f"export/{rel}", buf.getvalue())
        out[name] = rel
    return out


def _thumbnail(image: dict | None) -> bytes | None:
    from pipeline.io.images import ImageError, decode_image

    if not image or not image.get("bytes"):
        return None
    try:
        img = decode_image(image["bytes"], max_side=THUMB_PX)
    except ImageError:
        # A broken image must not stop the card; the row shows no thumbnail.
        return None
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _opening(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= OPENING_CHARS else text[: OPENING_CHARS - 1].rstrip() + "…"


def pick_rows(run_fs: RunFS, files: list[str], k: int, seed: int) -> list[dict]:
    """`k` rows drawn with `seed` (same seed, same data -> same rows), read row group by row group."""
    sizes = []
    for rel in files:
        with run_fs.fs.open_input_file(run_fs.path(rel)) as f:
            meta = pq.ParquetFile(f).metadata
            sizes.append([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
    total = sum(map(sum, sizes))
    wanted = sorted(random.Random(seed).sample(range(total), min(k, total)))
    rows, offset = [], 0
    for rel, groups in zip(files, sizes):
        with run_fs.fs.open_input_file(run_fs.path(rel)) as f:
            pf = pq.ParquetFile(f)
            for g, n in enumerate(groups):
                inside = [i - offset for i in wanted if offset <= i < offset + n]
                if inside:
                    table = pf.read_row_group(g)
                    rows += [table.slice(i, 1).to_pylist()[0] for i in inside]
                offset += n
    return rows


def write_examples(run_fs: RunFS, files: list[str], k: int, seed: int) -> list[Example]:
    out = []
    for n, row in enumerate(pick_rows(run_fs, files, k, seed)):
        names = list(row)
        q_img, p_img = pick(names, QUERY_IMAGE), pick(names, POS_IMAGE)
        image_col = q_img if q_img and row.get(q_img) else p_img
        thumb = _thumbnail(row.get(image_col)) if image_col else None
        rel = None
        if thumb is not None:
            rel = f"assets/example_{n}.jpg"
            run_fs.write_bytes(f"export/{rel}", thumb)
        negs = row.get("neg_texts") or []
        out.append(
            Example(
                id=str(row.get("id", n)),
                query=_opening(row.get(pick(names, QUERY_TEXT) or "")),
                image=rel,
                image_role=("query image" if image_col == q_img else "passage image") if rel else "",
                positive=_opening(row.get(pick(names, POS_TEXT) or "")),
                negative=_opening(negs[0]) if negs else None,
            )
        )
    return out
