"""CLIP scoring through the clip_filter stage vs a bare batched open_clip loop (issue 10).

    python bench/clip_filter.py --images 256 --shard 64

The model is a randomly initialised ViT-B-32 (open_clip's own architecture, the real compute of a
CLIP ViT-B/32; weights cannot be downloaded here), saved as a `local-dir:` checkpoint like the tiny one.
Images: N distinct 320x240 JPEGs in a run's image store. Both sides read the same stored bytes,
decode, preprocess and embed image and text in batches of 32 on the same threads:
- stage: the clip_filter actor (`ClipScoreFn`) called once per shard, as Ray calls it (reference
  columns in, scores and statuses out; prompt rendering, store reads and Arrow included);
- bare: a loop over the same files with `preprocess` + `encode_image` + `encode_text`.
ratio = bare s / stage s; target >= 0.8. Model load is excluded from both.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

TARGET = 0.8


def build_model(out: Path) -> str:
    import open_clip
    import torch
    from safetensors.torch import save_file


    cfg = open_clip.get_model_config("ViT-B-32")
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    return f"local-dir:{out}"


def main() -> None:
    import pyarrow as pa
    import torch
    from PIL import Image

    from pipeline.config import to_dict
    from pipeline.io.image_store import ImageStore
    from pipeline.models.clip import ClipConfig, ClipModel
    from pipeline.prompts import default_prompts_dir, load_sources
    from pipeline.stages.clip_filter import ClipFilterConfig, ClipScoreFn

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--shard", type=int, default=64)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-clip-"))
    name = build_model(tmp / "vitb32")
    store = ImageStore.from_uri(str(tmp / "run"))
    rng = np.random.default_rng(0)
    refs = []
    for i in range(args.images):
        arr = (rng.random((240, 320, 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=85)
        refs.append(store.put(buf.getvalue(), "jpeg", 320, 240))
    entities = [f"entity number {i}" for i in range(args.images)]
    cfg = ClipFilterConfig(clip=ClipConfig(model=name, batch_size=32))
    sources = load_sources(default_prompts_dir(), ("clip_filter/text.j2",))
    fn = ClipScoreFn(name, to_dict(cfg), sources, str(tmp / "run"))
    shards = [pa.table({"id": [str(i) for i in range(s, min(s + args.shard, args.images))],
                        "entity": entities[s:s + args.shard], "entity_type": ["thing"] * len(refs[s:s + args.shard]),
                        "query_image": refs[s:s + args.shard], "image_source": ["retrieved"] * len(refs[s:s + args.shard])})
              for s in range(0, args.images, args.shard)]
    fn(shards[0].slice(0, 2))  # warm-up (first-call allocations) for both sides
    started = time.perf_counter()
    for shard in shards:
        fn(shard)
    stage_s = time.perf_counter() - started
    bare = ClipModel(name, ClipConfig(model=name, batch_size=32))
    started = time.perf_counter()
    for s in range(0, args.images, 32):
        images = [bare.preprocess(Image.open(io.BytesIO(store.get(r))).convert("RGB")) for r in refs[s:s + 32]]
        tokens = bare.tokenizer(entities[s:s + 32])
        with torch.inference_mode():
            iv = bare.model.encode_image(torch.stack(images), normalize=True)
            tv = bare.model.encode_text(tokens, normalize=True)
        (iv * tv).sum(-1).numpy()
    bare_s = time.perf_counter() - started
    print(machine())
    print(f"{args.images} images 320x240 JPEG, ViT-B-32 (random weights), torch threads {torch.get_num_threads()}")
    print(f"stage  {stage_s:7.2f} s  {args.images / stage_s:6.1f} img/s")
    print(f"bare   {bare_s:7.2f} s  {args.images / bare_s:6.1f} img/s")
    ratio = bare_s / stage_s
    print(f"ratio  {ratio:.2f} (target >= {TARGET}) {'OK' if ratio >= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
