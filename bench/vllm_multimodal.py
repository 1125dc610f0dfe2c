"""Multimodal work through vLLM on CPU, side by side in one run (issue 22):

- GME embeddings (fused text + image inputs, the tiny GME, GME's sequential positions): the vLLM backend
  through `ray.data.llm` (`vllm_embed`, as gme_score runs it) vs raw `vllm.LLM.embed` on the same prompts
  and images (target >= 0.9), and vLLM vs the transformers backend (`GmeEmbedder.encode`), both ways;
- vision generation (one image per prompt, the tiny Qwen2-VL): `vllm_vision_generate` through
  `ray.data.llm` vs raw `vllm.LLM.chat` on the same conversations (data-URL image parts) and sampling
  (target >= 0.9).

Run in the vLLM venv (scripts/install_vllm.sh), under the e2e lock on a shared machine:

    PYTHONPATH=. ~/.cache/fusegen/vllm-venv/bin/python bench/vllm_multimodal.py [--rows 2000 --vision-rows 1000]

Each ray.data.llm figure is steady-state: one embedded Ray (2 CPUs) runs the processor over 1 row
(start-up: actors, engine load, one row) and then over N rows; rows/s = (N - 1) / (t_N - t_1). Raw vLLM:
engine load, then one call over the N rows (rows/s = N / call time). transformers: model load, then
`encode` over the N inputs in batches of 8. Load is reported apart. Only ratios from one run mean
anything on a loaded machine (the 5-minute load average is printed after each part).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

TARGET = 0.9
STATS = bool(os.environ.get("BENCH_STATS"))  # print Ray Data's per-operator stats of each N-row pass
INSTRUCTION = "Find a Wikipedia passage that answers the question about the image."
WORDS = ["tower", "bridge", "painting", "river", "castle", "mountain", "museum", "garden", "statue", "harbour"]


def png(seed: int, side: int = 0) -> bytes:
    """A noise PNG: `side` x `side` pixels, or 56..112 px a side when `side` is 0."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = (side, side) if side else (56 + 28 * int(rng.integers(0, 3)), 56 + 28 * int(rng.integers(0, 3)))
    buf = io.BytesIO()
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def photo(seed: int, side: int = 0) -> bytes:
    """A photo-like JPEG (quality 90): smooth gradients, a few soft shapes, a little sensor noise; it
    compresses as web photos do (~17 KB, 9x, at 224 px), where noise does not compress at all."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    w, h = (side, side) if side else (56 + 28 * int(rng.integers(0, 3)), 56 + 28 * int(rng.integers(0, 3)))
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = rng.integers(40, 200, 3)
    sky = np.stack([base[i] + 50 * np.sin(3 * x + i) + 40 * y for i in range(3)], -1)
    img = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        draw.ellipse((x0, y0, x0 + w // 3, y0 + h // 4), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    img = img.filter(ImageFilter.GaussianBlur(2))
    grain = rng.normal(0, 10, (h, w, 3))
    img = Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


IMAGES = {"noise": png, "photo": photo}


class ImageFiles:
    """The bench's images as files, each row's image column holding a reference to one (`{"path": ...}`),
    resolved in the worker by `read` (the `load_image` a run passes: its image store's references)."""

    def __init__(self, folder: Path, images: list[bytes]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.refs = []
        for i, data in enumerate(images):
            (folder / f"{i}.img").write_bytes(data)
            self.refs.append({"path": str(folder / f"{i}.img")})

    @staticmethod
    def read(ref: dict) -> bytes:
        return Path(ref["path"]).read_bytes()


def texts(n: int) -> list[str]:
    return [f"When was this {WORDS[i % len(WORDS)]} built, and by whom? ({i})" for i in range(n)]


def engine(**overrides):
    from pipeline.models.llm import LLMConfig

    base = {
        "backend": "vllm", "vllm_device": "cpu", "gpu_memory_utilization": 0.05, "max_model_len": 1024,
        "enforce_eager": True, "dtype": "float32", "schedule_grace_s": 0, "max_new_tokens": 16,
    }
    return LLMConfig(**{**base, **overrides})


OBJECT_STORE_MB = [512]


def ray_init():
    """The embedded Ray a run starts (pipeline/raycluster.init_ray): its object store, and idle workers
    kept alive for the row maps. With Ray's own defaults a 2-CPU Ray kills a row map's idle worker after
    1 s and the next task pays a new process (imports, the chat template): the engine then waited ~6 s
    between pairs of blocks (session 6's CPU timeline in docs/benchmarks.md)."""
    from pipeline.raycluster import init_ray
    from pipeline.settings import RayConfig

    init_ray(RayConfig(num_cpus=2, object_store_mb=OBJECT_STORE_MB[0], log_to_driver=True))


def dataset(rows: list[dict], block_rows: int):
    """The rows as a Ray dataset of `block_rows`-row blocks (a run's shards: one block each); 0: Ray's
    default split of `from_items` (up to 200 blocks, i.e. one or two rows a block here)."""
    import ray

    if not block_rows:
        return ray.data.from_items(rows)
    return ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // block_rows)))


def collect(ds) -> tuple[list[dict], float]:
    """(the output rows, rows/s between the first output block and the last): the rate once the engine
    answers, start-up left out without a second pass (work before the engine may have run ahead)."""
    rows, first, first_rows = [], None, 0
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        if first is None:
            first, first_rows = time.perf_counter(), block.num_rows
        rows += block.to_pylist()
    last = time.perf_counter()
    if STATS and len(rows) > 1:
        print(ds.stats(), file=sys.stderr)
    return rows, (len(rows) - first_rows) / (last - first) if last > first else float("nan")


def timed_passes(rows: list[dict], run) -> tuple[float, float, list[dict], float]:
    """(t over 1 row, t over all rows, the output rows, `collect`'s in-pass rate of the N-row pass) of
    `run(rows) -> lazy dataset`, in one embedded Ray."""
    import ray

    ray_init()
    times = []
    try:
        for part in (rows[:1], rows):
            start = time.perf_counter()
            out, in_pass = collect(run(part))
            times.append(time.perf_counter() - start)
            assert len(out) == len(part)
    finally:
        ray.shutdown()
    return times[0], times[1], out, in_pass


# --- GME ---------------------------------------------------------------------------------------------


def gme_bench(model: str, n: int, tf_rows: int, side: int, block_rows: int, kind: str, tmp: Path,
              batch_size: int = 32) -> dict:
    from PIL import Image

    from pipeline.models.gme import GmeConfig, GmeEmbedder, GmeInput, render_text, resize_for_gme
    from pipeline.models.vllm_embed import EMBED_ERROR, EMBEDDING, POOLER, EmbedColumns, sequential_positions
    from pipeline.stage import Resources

    gme = GmeConfig(min_image_tokens=4, max_image_tokens=64, max_length=256, dtype="float32")
    images, queries = [IMAGES[kind](i, side) for i in range(n)], texts(n)
    files = ImageFiles(tmp / "gme-images", images)
    rows = [
        {"id": str(i), "text": queries[i], "instruction": INSTRUCTION, "image": files.refs[i]} for i in range(n)
    ]
    cfg, resources = engine(max_model_len=512), Resources(batch_size=batch_size, concurrency=1, num_cpus=1)
    columns = EmbedColumns(text="text", image="image", instruction="instruction")

    def run(part: list[dict]) -> list[dict]:
        from pipeline.models.vllm_embed import vllm_embed

        return vllm_embed(dataset(part, block_rows), cfg, model, gme, resources, "bench", columns, files.read)

    t1, tn, ray_out, in_pass = timed_passes(rows, run)
    assert all(r[EMBED_ERROR] == "" and r[EMBEDDING] for r in ray_out)
    load_ray = os.getloadavg()[1]

    import numpy as np
    from vllm import LLM

    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    start = time.perf_counter()
    llm = LLM(model, runner="pooling", max_model_len=512, gpu_memory_utilization=0.05, enforce_eager=True,
              dtype="float32", pooler_config=dict(POOLER), hf_overrides=sequential_positions)
    raw_load = time.perf_counter() - start
    inputs = [GmeInput(text=q, image=Image.open(io.BytesIO(b)), instruction=INSTRUCTION) for q, b in zip(queries, images)]
    prompts = [
        {"prompt": render_text(x), "multi_modal_data": {"image": resize_for_gme(x.image, 4, 64)}} for x in inputs
    ]
    start = time.perf_counter()
    raw = llm.embed(prompts, use_tqdm=False)
    raw_s = time.perf_counter() - start
    assert len(raw) == n
    by_id = {r["id"]: np.asarray(r[EMBEDDING], np.float64) for r in ray_out}
    worst = min(float(np.dot(by_id[str(i)], np.asarray(o.outputs.embedding, np.float64))
                      / np.linalg.norm(o.outputs.embedding)) for i, o in enumerate(raw))
    del llm
    load_raw = os.getloadavg()[1]

    start = time.perf_counter()
    embedder = GmeEmbedder(model, gme, device="cpu")
    tf_load = time.perf_counter() - start
    start = time.perf_counter()
    embedder.encode(inputs[:tf_rows], batch_size=8)
    tf_s = time.perf_counter() - start
    ray_rate, raw_rate, tf_rate = (n - 1) / (tn - t1), n / raw_s, tf_rows / tf_s
    return {
        "rows": n,
        "transformers_rows": tf_rows,
        "inputs": f"fused: query text + a {side or '56..112'} px {kind} image (<= 64 image tokens), tiny GME, float32",
        "image_bytes_mean": round(sum(map(len, images)) / n),
        "ray_data_llm": {"one_row_s": round(t1, 1), "all_rows_s": round(tn, 1), "steady_rows_per_s": round(ray_rate, 2),
                         "in_pass_rows_per_s": round(in_pass, 2)},
        "raw_vllm_embed": {"load_s": round(raw_load, 1), "embed_s": round(raw_s, 2), "rows_per_s": round(raw_rate, 2)},
        "transformers": {"load_s": round(tf_load, 1), "encode_s": round(tf_s, 2), "rows_per_s": round(tf_rate, 2)},
        "ray_over_raw": round(ray_rate / raw_rate, 3),
        "ray_in_pass_over_raw": round(in_pass / raw_rate, 3),
        "target": TARGET,
        "worst_cosine_ray_vs_raw": round(worst, 7),
        "raw_vllm_over_transformers": round(raw_rate / tf_rate, 3),
        "ray_over_transformers": round(ray_rate / tf_rate, 3),
        "loadavg_5min": {"after_ray": round(load_ray, 1), "after_raw": round(load_raw, 1),
                         "after_transformers": round(os.getloadavg()[1], 1)},
    }


# --- vision generation -------------------------------------------------------------------------------


def vision_bench(model: str, n: int, side: int, block_rows: int, kind: str, tmp: Path, batch_size: int = 32) -> dict:
    from pipeline.models.llm import LLM_ERROR, MESSAGES, RAW
    from pipeline.models.vllm_vision import attach_image, data_url
    from pipeline.stage import Resources

    images = [IMAGES[kind](100_000 + i, side) for i in range(n)]
    files = ImageFiles(tmp / "vision-images", images)
    messages = [[{"role": "user", "content": f"Describe the {WORDS[i % len(WORDS)]} in this picture."}] for i in range(n)]
    rows = [{"id": str(i), MESSAGES: json.dumps(m), "image": files.refs[i]} for i, m in enumerate(messages)]
    cfg, resources = engine(max_model_len=1024), Resources(batch_size=batch_size, concurrency=1, num_cpus=1)

    def run(part: list[dict]) -> list[dict]:
        from pipeline.models.vllm_vision import vllm_vision_generate

        return vllm_vision_generate(dataset(part, block_rows), cfg, model, None, resources, "bench",
                                    load_image=files.read)

    def check(out: list[dict]) -> None:
        assert all(r[LLM_ERROR] in ("", "error:truncated_output") for r in out), {r[LLM_ERROR] for r in out}

    t1, tn, ray_out, in_pass = timed_passes(rows, run)
    check(ray_out)
    load_ray = os.getloadavg()[1]

    from vllm import LLM, SamplingParams

    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    start = time.perf_counter()
    llm = LLM(model, max_model_len=1024, gpu_memory_utilization=0.05, enforce_eager=True, dtype="float32")
    raw_load = time.perf_counter() - start
    convs = [attach_image(m, data_url(b)) for m, b in zip(messages, images)]
    start = time.perf_counter()
    out = llm.chat(convs, SamplingParams(max_tokens=cfg.max_new_tokens, temperature=0.0), use_tqdm=False)
    raw_s = time.perf_counter() - start
    assert len(out) == n
    texts = {r["id"]: r[RAW] for r in ray_out}
    same = sum(texts[str(i)] == o.outputs[0].text for i, o in enumerate(out))
    del llm
    ray_rate, raw_rate = (n - 1) / (tn - t1), n / raw_s
    return {
        "rows": n,
        "inputs": f"one {side or '56..112'} px {kind} image + a one-line question, tiny Qwen2-VL, greedy, 16 new tokens, float32",
        "image_bytes_mean": round(sum(map(len, images)) / n),
        "ray_data_llm": {"one_row_s": round(t1, 1), "all_rows_s": round(tn, 1), "steady_rows_per_s": round(ray_rate, 2),
                         "in_pass_rows_per_s": round(in_pass, 2)},
        "raw_vllm_chat": {"load_s": round(raw_load, 1), "chat_s": round(raw_s, 2), "rows_per_s": round(raw_rate, 2)},
        "ray_over_raw": round(ray_rate / raw_rate, 3),
        "ray_in_pass_over_raw": round(in_pass / raw_rate, 3),
        "target": TARGET,
        "same_text_as_raw": f"{same}/{n}",
        "loadavg_5min": {"after_ray": round(load_ray, 1), "after_raw": round(os.getloadavg()[1], 1)},
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000, help="GME inputs")
    ap.add_argument("--vision-rows", type=int, default=1000)
    ap.add_argument("--tf-rows", type=int, default=300, help="GME inputs the transformers backend embeds")
    ap.add_argument("--side", type=int, default=224, help="image side in pixels (0: 56..112 mixed)")
    ap.add_argument("--tmp", default="/tmp/fusegen-bench-multimodal")
    ap.add_argument("--block-rows", type=int, default=256,
                    help="rows per input block, as a run's shard (0: from_items' default split, ~1 row a block)")
    ap.add_argument("--only", choices=("gme", "vision"), default=None)
    ap.add_argument("--images", choices=tuple(IMAGES), default="noise",
                    help="noise PNGs (no smaller than their pixels: the worst case) or photo-like JPEGs")
    ap.add_argument("--object-store-mb", type=int, default=512, help="the embedded Ray's (a run's default: 512)")
    ap.add_argument("--vision-batch-size", type=int, default=32, help="the engine stage's batch (resources.batch_size)")
    ap.add_argument("--gme-batch-size", type=int, default=32, help="the GME engine stage's batch")
    args = ap.parse_args()
    from pipeline.models.tiny import build_tiny_gme, build_tiny_qwen2_vl

    tmp = Path(args.tmp)
    OBJECT_STORE_MB[0] = args.object_store_mb
    result = {"machine": machine(), "block_rows": args.block_rows, "object_store_mb": args.object_store_mb}
    if args.only in (None, "gme"):
        result["gme"] = gme_bench(str(build_tiny_gme(tmp / "gme")), args.rows, min(args.tf_rows, args.rows), args.side,
                                  args.block_rows, args.images, tmp, args.gme_batch_size)
    if args.only in (None, "vision"):
        result["vision"] = vision_bench(str(build_tiny_qwen2_vl(tmp / "qwen2_vl")), args.vision_rows, args.side,
                                        args.block_rows, args.images, tmp, args.vision_batch_size)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
