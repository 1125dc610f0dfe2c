"""A finished MegaPairs run written through the real export code (no Ray), for export, exporter, validate
and card tests.

`mp_upstream_rows(store, n)` builds the rows the `instruct` stage hands to export (the columns of
mp_contract.md: one mined (query, target) pair each, with hard negatives, a description and
instructions); every image is a real small PNG in the run's image store. `make_megapairs_run(root)`
pushes them through `megapairs_batch`, `write_pieces`, the shard committer and `finish_part` (the
export stage's worker and driver halves) and writes run.yaml plus a complete manifest per section
(pool, mine_pairs, describe, instruct, export) with model ids as the runner records them.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipeline.io.fs import RunFS
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.io.shards import tag_rows
from pipeline.stages.export import ExportConfig
from pipeline.triplets_megapairs import MegaPairsExportConfig, megapairs_batch, run_models
from tests.support.export_run import commit_export, png, typed_table, write_run_files

SIZE = (30, 20)
MP_STAGES = ["pool", "mine_pairs", "describe", "instruct", "export"]
MODELS = {
    "mine_pairs": {"view:clip_image": "tiny:clip (random tiny model, seed 0)", "view:text": "sentence-transformers/all-MiniLM-L6-v2"},
    "describe": {"vlm": "Qwen/Qwen2-VL-7B-Instruct@a28a094 via vllm"},
    "instruct": {"llm": "HuggingFaceTB/SmolLM2-135M-Instruct via transformers"},
}
INSTRUCTIONS = [
    ["Find a similar scene where the car is red instead of blue.", "Show the same street with a red car.",
     "Retrieve a picture like this one but with a red vehicle."],
    ["Find the same kind of room with the lamp switched on.", "Show a similar interior, lit by a lamp.",
     "Retrieve this scene at night with a lamp."],
]


def mp_upstream_rows(store: ImageStore, n: int = 8, images: int = 8, negatives: int = 3) -> pa.Table:
    """`n` pairs over `images` pool images: query i % images with 1-2 targets each, `negatives` negatives."""
    refs = {k: store.put(png((29 * k % 256, 60 + 17 * k % 180, 250 - 23 * k % 200), SIZE), "png", *SIZE)
            for k in range(images)}
    rows = []
    for i in range(n):
        q, rank = i % images, i // images
        t = (q + 1 + rank) % images
        negs = [k for k in range((q + 3) % images, images) if k not in (q, t)][:negatives]
        negs += [k for k in range(images) if k not in (q, t, *negs)][: negatives - len(negs)]
        rows.append({
            "id": f"p{q}~p{t}", "query_id": f"p{q}", "query_image": refs[q], "query_caption": f"image {q}",
            "query_license": "cc-by-4.0", "target_id": f"p{t}", "target_image": refs[t], "target_caption": f"image {t}",
            "target_license": "cc0-1.0", "pair_views": ["clip_image", "text"][: 1 + i % 2],
            "pair_scores": [0.9, 0.85][: 1 + i % 2], "pair_rank": rank,
            "neg_ids": [f"p{k}" for k in negs], "neg_images": [refs[k] for k in negs],
            "neg_scores": [0.8 - 0.01 * j for j in range(len(negs))], "mine_seed": 7,
            "description": "Both images show a street. However, the Source Image has a blue car, whereas the "
                           "Target Image has a red car.",
            "word_limit": 60 + i, "description_mode": "vlm", "describe_raw": "raw",
            "instructions": INSTRUCTIONS[i % 2], "demo_ids": [f"demo{i % 5}", f"demo{(i + 1) % 5}"],
            "instruct_raw": "[...]",
        })
    types = {"query_image": IMAGE_REF, "target_image": IMAGE_REF, "neg_images": pa.list_(IMAGE_REF),
             "pair_scores": pa.list_(pa.float32()), "pair_rank": pa.int32(), "neg_scores": pa.list_(pa.float32()),
             "word_limit": pa.int32(), "mine_seed": pa.int64()}
    return typed_table(rows, types)


def make_megapairs_run(root: Path, rows: int = 8, validation_ratio: float = 0.4, upstream: pa.Table | None = None,
                       **mp: object) -> Path:
    """A run dir whose every section is complete and whose export holds MegaPairs triplets of real PNGs."""
    run = root / "run"
    table = upstream if upstream is not None else mp_upstream_rows(ImageStore(RunFS.from_uri(str(run))), rows)
    config = ExportConfig(schema="megapairs", validation_ratio=validation_ratio, split_seed=1,
                          megapairs=MegaPairsExportConfig(**mp))
    models = run_models([{"stage": s, "models": m} for s, m in MODELS.items()])
    out = megapairs_batch(tag_rows(table, "000000"), config.megapairs, validation_ratio, 1, models=models)
    counts, reasons = commit_export(run, config, table.num_rows, out)
    n = table.num_rows
    ledgers = {
        "pool": ({"in": 10, "out": 8, "filtered": 1, "rejected": 1},
                 {"filter:duplicate_image": 1, "error:image_truncated": 1}),
        "mine_pairs": ({"in": n + 1, "out": n, "filtered": 1, "rejected": 0}, {"filter:no_pair_in_band": 1}),
        "describe": ({"in": n, "out": n, "filtered": 0, "rejected": 0}, {}),
        "instruct": ({"in": n, "out": n, "filtered": 0, "rejected": 0}, {}),
        "export": (counts, reasons),
    }
    write_run_files(run, {
        "name": "megapairs-test", "pipeline": "megapairs", "stages": MP_STAGES,
        "export": {"schema": "megapairs", "validation_ratio": validation_ratio, "megapairs": dict(mp)},
    }, ledgers, MODELS)
    return run
