"""A finished GME run written through the real export code (no Ray), for the exporter and validator tests.

`upstream_rows(store, n)` builds the rows the `negatives` stage hands to export: passages in four
languages with titles, a rewritten query and a query image each, and `negatives` mined negatives
with their own images, every image a real small PNG stored in the run's image store.
`make_gme_run(root)` pushes those rows through `gme_batch`, `write_pieces` and the shard committer
(the worker and driver halves of the export stage) and writes run.yaml plus a complete manifest for
every stage, so `RUN_DIR/export/data/{train,validation}-*.parquet` are exactly what a run writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from pipeline.io.fs import RunFS
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.io.shards import tag_rows
from pipeline.stages.export import ExportConfig, gme_batch
from tests.support.export_run import commit_export, png, typed_table, write_run_files

STAGES = ["ingest", "doc2query", "consistency", "entities", "images", "clip_filter", "gme_score", "negatives", "export"]
PASSAGES = [
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, built for the 1889 World's Fair."),
    ("Kölner Dom", "Der Kölner Dom ist eine römisch-katholische Kirche in Köln und ein Bauwerk der Gotik."),
    ("Pont du Gard", "Le pont du Gard est un pont-aqueduc romain à trois niveaux situé dans le Gard."),
    ("长城", "长城是中国古代的军事防御工程，东起山海关，西至嘉峪关，全长数千公里。"),
    ("Golden Gate Bridge", "The Golden Gate Bridge is a suspension bridge spanning the strait at San Francisco."),
    ("Sagrada Família", "La Sagrada Família es una basílica católica de Barcelona diseñada por Antoni Gaudí."),
]
SIZE = (24, 16)
QUERIES = ["When was this landmark built?", "Who designed this structure?", "What is this building made of?"]


def doc_color(d: int) -> tuple[int, int, int]:
    return (37 * d % 256, 90 + 11 * d % 100, 200 - 7 * d % 150)


def upstream_rows(store: ImageStore, n: int = 8, negatives: int = 3, docs: int = 6) -> pa.Table:
    """`n` query rows over `docs` passages (several queries share a passage), as after `negatives`."""
    images = {d: store.put(png(doc_color(d), SIZE), "png", *SIZE) for d in range(docs)}
    rows = []
    for i in range(n):
        d = i % docs
        title, text = PASSAGES[d % len(PASSAGES)]
        generated = i % 3 == 2
        query_image = store.put(png((255 - d, 3 * i % 256, 40), SIZE), "png", *SIZE) if generated else images[d]
        neg = [(d + k) % docs for k in range(1, negatives + 1)]
        rows.append({
            "id": f"d{d}-q{i // docs}", "doc_id": f"d{d}", "text": f"{text} ({d})", "title": title,
            "domain": "landmarks", "image": images[d], "content_hash": f"h{d}",
            "query": f"{QUERIES[i % 3]} ({title})", "answer": "1889", "rewritten_query": QUERIES[i % 3],
            "entity": title, "entity_type": "landmark", "consistency_rank": 1 + i % 4,
            "consistency_score": 0.5, "query_image": query_image,
            "image_source": "generated" if generated else "doc", "image_origin": "store",
            "image_license": "cc-by-4.0", "clip_score": 0.25 + 0.01 * i, "instruction": None if i % 2 else "Find it.",
            "gme_pos_score": 0.6 + 0.01 * i, "gme_pos_rank": 1,
            "neg_ids": [f"d{k}" for k in neg], "neg_doc_ids": [f"d{k}" for k in neg],
            # Ranks reversed against list order: export must sort the negatives hardest first.
            "neg_texts": [f"{PASSAGES[k % len(PASSAGES)][1]} ({k})" for k in neg],
            "neg_titles": [PASSAGES[k % len(PASSAGES)][0] for k in neg],
            "neg_images": [images[k] for k in neg], "neg_scores": [0.5 - 0.1 * j for j in range(negatives)][::-1],
            "neg_ranks": list(range(negatives, 0, -1)), "num_negatives": negatives,
            "llm_raw": "{}", "entities_raw": "{}",
        })
    types = {"image": IMAGE_REF, "query_image": IMAGE_REF, "neg_images": pa.list_(IMAGE_REF),
             "consistency_rank": pa.int32(), "clip_score": pa.float32(), "gme_pos_score": pa.float32(),
             "neg_scores": pa.list_(pa.float32()), "neg_ranks": pa.list_(pa.int32()), "instruction": pa.string()}
    return typed_table(rows, types)


def make_gme_run(root: Path, rows: int = 8, negatives: int = 3, validation_ratio: float = 0.4,
                 task: str = "it2it", upstream: pa.Table | None = None) -> Path:
    """A run dir whose every stage is complete and whose export holds GME triplets of real PNGs."""
    run = root / "run"
    table = upstream if upstream is not None else upstream_rows(ImageStore(RunFS.from_uri(str(run))), rows, negatives)
    config = ExportConfig(task=task, validation_ratio=validation_ratio, split_seed=1)
    counts, reasons = commit_export(run, config, table.num_rows, gme_batch(tag_rows(table, "000000"), config))
    n_in = table.num_rows
    ledgers = {name: ({"in": n_in, "out": n_in, "filtered": 0, "rejected": 0}, {}) for name in STAGES[:-1]}
    write_run_files(run, {
        "name": "gme-test", "pipeline": "gme", "stages": STAGES,
        "export": {"schema": "gme", "task": task, "validation_ratio": validation_ratio},
    }, {**ledgers, "export": (counts, reasons)}, {})
    return run


def export_rows(run: Path) -> dict[str, list[dict]]:
    """split -> the exported triplet rows (image structs with bytes), in file order."""
    import pyarrow.parquet as pq

    out: dict[str, list[dict]] = {}
    for path in sorted((run / "export" / "data").glob("*.parquet")):
        out.setdefault(path.name.split("-", 1)[0], []).extend(pq.read_table(path).to_pylist())
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def split_ids(rows: dict[str, dict], split: str) -> list[str]:
    """The ids of one split's rows, sorted: what a loop over a loaded split must have covered (a loop over
    nothing asserts nothing)."""
    ids = sorted(i for i, r in rows.items() if r["split"] == split)
    assert ids, f"the run has no {split} rows"
    return ids
