"""GME embedding: `GmeEmbedder.encode` vs a bare batched loop over the same inputs, side by side in one run.

    python bench/gme_embed.py [--inputs 128] [--batch-size 8] [--kinds fused|mixed] [--model tiny:gme]

Inputs: N seeded texts of 5-60 words, each with a noise image whose sides are multiples of 28 inside the
token bounds (so neither path resizes: both feed the processor the same pixels); `--kinds mixed` cycles
text-only, image-only and fused inputs. The bare loop is the released recipe written inline with nothing
around it: chat strings, the processor (right padding), the model with sequential positions, last-token
pooling, L2 normalisation, batches in input order. `encode` adds input checks, `resize_for_gme` and its
size ordering. Both run in this process on the same loaded model, alternating, `--repeats` times each;
seconds are the median. ratio = bare s / encode s (1.0 = no overhead; above 1, encode is faster). The
table also shows the largest difference between the two paths' vectors (it should be < 1e-5).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import _WORDS, machine

from pipeline.models.gme import GmeConfig, GmeEmbedder, GmeInput, render_text
from pipeline.models.sources import resolve_model


def make_inputs(n: int, kinds: str, cfg: GmeConfig, seed: int = 0) -> list[GmeInput]:
    rng = random.Random(seed)
    units = [
        (a, b)
        for a in range(1, 65)
        for b in range(1, 65)
        if cfg.min_image_tokens <= a * b <= cfg.max_image_tokens
    ]
    inputs = []
    for i in range(n):
        kind = "fused" if kinds == "fused" else ("text", "image", "fused")[i % 3]
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 60))).capitalize() + "?"
        image = None
        if kind != "text":
            a, b = rng.choice(units)
            pixels = np.random.RandomState(i).randint(0, 255, (28 * a, 28 * b, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
        inputs.append(GmeInput(text=None if kind == "image" else text, image=image))
    return inputs


def bare_loop(emb: GmeEmbedder, inputs: list[GmeInput], batch_size: int) -> np.ndarray:
    """The recipe inline: what `encode` computes, minus everything around the forward pass."""
    out = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        images = [inp.image for inp in batch if inp.image is not None]
        enc = emb.processor(
            text=[render_text(inp) for inp in batch], images=images or None, padding=True, padding_side="right",
            truncation=True, max_length=emb.cfg.max_length, return_tensors="pt",
        )  # fmt: skip
        vision = (
            {"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]} if images else {}
        )
        ids, mask = enc["input_ids"], enc["attention_mask"]
        with torch.inference_mode():
            hidden = emb.model(
                input_ids=ids, attention_mask=mask, position_ids=torch.arange(ids.shape[1]).expand_as(ids),
                use_cache=False, **vision,
            ).last_hidden_state  # fmt: skip
            vecs = hidden[torch.arange(len(batch)), mask.sum(dim=1) - 1].float()
            out.append(torch.nn.functional.normalize(vecs, dim=1).numpy())
    return np.concatenate(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--kinds", choices=["fused", "mixed"], default="fused")
    ap.add_argument("--model", default="tiny:gme")
    ap.add_argument("--min-image-tokens", type=int, default=16)
    ap.add_argument("--max-image-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", default="/tmp/fusegen-bench-gme")
    args = ap.parse_args()
    cfg = GmeConfig(
        model=args.model, min_image_tokens=args.min_image_tokens, max_image_tokens=args.max_image_tokens,
        max_length=max(512, args.max_image_tokens + 128), batch_size=args.batch_size,
    )  # fmt: skip
    path, identity = resolve_model(cfg.model, Path(args.cache))
    emb = GmeEmbedder(path, cfg, device="cpu")
    inputs = make_inputs(args.inputs, args.kinds, cfg)
    emb.encode(inputs[: args.batch_size])  # warm-up: first-call allocations and lazy imports
    times: dict[str, list[float]] = {"encode": [], "bare loop": []}
    vectors: dict[str, np.ndarray] = {}
    runs = {
        "encode": lambda: emb.encode(inputs),
        "bare loop": lambda: bare_loop(emb, inputs, args.batch_size),
    }
    load = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            vectors[name] = fn()
            times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    diff = float(np.abs(vectors["encode"] - vectors["bare loop"]).max())
    print(f"{machine()}; torch threads {torch.get_num_threads()}; load {load:.1f}/{os.getloadavg()[0]:.1f}")
    print(
        f"model {identity}, dim {emb.dim}; {args.inputs} {args.kinds} inputs, batch {args.batch_size}, "
        f"image tokens {cfg.min_image_tokens}..{cfg.max_image_tokens}; median of {args.repeats}\n"
    )
    print("| path | seconds | inputs/s | all runs s |")
    print("|---|---:|---:|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.2f} | {args.inputs / s:.1f} | {', '.join(f'{t:.2f}' for t in times[name])} |")
    print(
        f"\nratio (bare s / encode s) = {seconds['bare loop'] / seconds['encode']:.2f}; "
        f"max |encode - bare| = {diff:.1e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
