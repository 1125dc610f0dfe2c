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

import io
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import yaml
from PIL import Image

from pipeline import __version__
from pipeline.io.commit import ShardCommitter, write_pieces
from pipeline.io.fs import RunFS
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.io.manifest import aggregate_markers
from pipeline.io.shards import tag_rows
from pipeline.stages.export import Export, ExportConfig
from pipeline.triplets_megapairs import MegaPairsExportConfig, megapairs_batch, run_models

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


def png(color: tuple[int, int, int], size: tuple[int, int] = (30, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def mp_upstream_rows(store: ImageStore, n: int = 8, images: int = 8, negatives: int = 3) -> pa.Table:
    """`n` pairs over `images` pool images: query i % images with 1-2 targets each, `negatives` negatives."""
    refs = {k: store.put(png((29 * k % 256, 60 + 17 * k % 180, 250 - 23 * k % 200)), "png", 30, 20)
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
    table = pa.Table.from_pylist(rows)
    for name, tp in types.items():
        table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(tp))
    return table


def manifest(stage: str, rows: dict, reasons: dict | None = None) -> dict:
    return {
        "stage": stage, "fingerprint": f"fp-{stage}", "status": "complete", "rows": rows,
        "reasons": reasons or {}, "seconds": 1.0, "models": MODELS.get(stage, {}), "decision": "run: first run",
        "config": {},
    }


def make_megapairs_run(root: Path, rows: int = 8, validation_ratio: float = 0.4, upstream: pa.Table | None = None,
                       **mp: object) -> Path:
    """A run dir whose every section is complete and whose export holds MegaPairs triplets of real PNGs."""
    run = root / "run"
    run_fs = RunFS.from_uri(str(run))
    table = upstream if upstream is not None else mp_upstream_rows(ImageStore(run_fs), rows)
    config = ExportConfig(schema="megapairs", validation_ratio=validation_ratio, split_seed=1,
                          megapairs=MegaPairsExportConfig(**mp))
    stage = Export(config, SimpleNamespace(run_uri=str(run)))
    models = run_models([{"stage": s, "models": m} for s, m in MODELS.items()])
    out = megapairs_batch(tag_rows(table, "000000"), config.megapairs, validation_ratio, 1, models=models)
    progress = SimpleNamespace(update=lambda n, counts: None)
    committer = ShardCommitter(run_fs, stage, "export", [SimpleNamespace(shard="000000", rows=table.num_rows)],
                               {}, progress)
    committer.add(write_pieces(out, str(run), stage, "export", "export/data"))
    committer.finish()
    counts, reasons, _ = aggregate_markers(run_fs, "export")
    run_fs.write_bytes("run.yaml", yaml.safe_dump({
        "fusegen_version": __version__, "name": "megapairs-test", "pipeline": "megapairs", "stages": MP_STAGES,
        "export": {"schema": "megapairs", "validation_ratio": validation_ratio, "megapairs": dict(mp)},
    }).encode())
    n = table.num_rows
    ledgers = {
        "pool": ({"in": 10, "out": 8, "filtered": 1, "rejected": 1},
                 {"filter:duplicate_image": 1, "error:image_truncated": 1}),
        "mine_pairs": ({"in": n + 1, "out": n, "filtered": 1, "rejected": 0}, {"filter:no_pair_in_band": 1}),
        "describe": ({"in": n, "out": n, "filtered": 0, "rejected": 0}, {}),
        "instruct": ({"in": n, "out": n, "filtered": 0, "rejected": 0}, {}),
    }
    for i, name in enumerate(MP_STAGES, start=1):
        folder = "export" if name == "export" else f"{i:02d}_{name}"
        rows_, why = (counts, dict(reasons)) if name == "export" else ledgers[name]
        run_fs.write_json(f"{folder}/_manifest.json", manifest(name, rows_, why))
    return run
