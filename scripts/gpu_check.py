"""Model parity on a GPU through the project's own model classes: what a lent GPU machine (torch,
transformers, accelerate, sentence-transformers; no vLLM, no Ray, no network) can check in minutes.

Run it with scripts/gpu_check.sh, which puts carried wheels (.whl/: diffusers, open_clip) on the path.
Each check loads the same model twice, a reference in float32 on the CPU and a candidate on `--device`
in the dtype a GPU config runs it in, and compares their outputs on the same inputs:
- gme (models/gme.py `GmeEmbedder`): bfloat16 on CUDA; cosine per input kind (text, image, fused);
- clip (models/clip.py `ClipModel`): float32 on CUDA; cosine of image and text vectors;
- diffusion (models/diffusion.py `Drawer`): float16 on CUDA; pixel differences of the same seeded images,
  and the images must be finite and not blank (an fp16 VAE overflow gives NaN or black images).
With `--device cpu` the candidate is float32 on the CPU too: the comparison must pass trivially (it
checks the script and the models' CPU path, e.g. in CI). The models are the seeded tiny random ones
(models/tiny.py, built locally) unless a local checkpoint is given (`--gme PATH`, `--clip local-dir:PATH`,
`--diffusion PATH`). It prints one line per comparison (min cosine or pixel difference, max abs
difference, ms per batch for candidate and reference) and exits 1 when a threshold fails, 2 when the
environment cannot run the checks asked for (no CUDA device, an import that needs Ray), 0 otherwise;
a check whose library is absent is reported as SKIP (`--strict` makes that a failure).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Not on the lent machine: importing the model classes must not need them.
ABSENT = ("ray", "vllm")
MODEL_MODULES = ("pipeline.models.gme", "pipeline.models.clip", "pipeline.models.diffusion", "pipeline.models.tiny")


class _Absent(importlib.abc.MetaPathFinder):
    """Makes `import ray` / `import vllm` fail, as on the lent machine."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ImportError(f"{name} is not installed on the GPU machine (gpu_check blocks it)")


@dataclass
class Result:
    check: str
    what: str
    value: float
    threshold: float
    higher_is_better: bool
    max_abs: float
    ms_candidate: float
    ms_reference: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        good = self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold
        return bool(good)

    def line(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        metric = "min cosine" if self.higher_is_better else "mean |px diff|"
        return (f"{'PASS' if self.ok else 'FAIL'} {self.check:<9} {self.what:<7} {metric} {self.value:.6f} "
                f"(need {op} {self.threshold:g})  max |diff| {self.max_abs:.3g}  ms/batch {self.ms_candidate:.1f} "
                f"candidate, {self.ms_reference:.1f} reference{'  ' + self.detail if self.detail else ''}")


def timed(fn, *args):
    """(result, ms) of one call after one warm-up call; CUDA work is waited for."""
    import torch

    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) * 1000


def cosines(a, b):
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12), float(np.abs(a - b).max())


def images(n: int, seed: int = 0, sizes=((96, 64), (64, 96), (128, 128), (80, 80))):
    """Seeded synthetic RGB images of a few sizes and aspect ratios (gradients plus noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        x = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.2, 1.0, 3)[None, None, :]
        y = np.linspace(255, 0, h)[:, None, None] * rng.uniform(0.2, 1.0, 3)[None, None, :]
        pixels = np.clip(0.5 * x + 0.5 * y + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(pixels, "RGB"))
    return out


TEXTS = [
    "When was the Eiffel Tower built?",
    "A red tram crossing a bridge over the river at dusk.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Which mountain range is shown in this picture?",
]


def check_gme(args, device: str, work: Path) -> list[Result]:
    from pipeline.models.gme import GmeConfig, GmeEmbedder, GmeInput

    path = args.gme or str(_tiny("gme", work))
    cuda = device != "cpu"
    base = {"min_image_tokens": 4, "max_image_tokens": 256, "max_length": 512} if not args.gme else {}
    reference = GmeEmbedder(path, GmeConfig(model=path, dtype="float32", **base), device="cpu")
    candidate = GmeEmbedder(path, GmeConfig(model=path, dtype="bfloat16" if cuda else "float32", **base), device=device)
    pics = images(len(TEXTS))
    kinds = {
        "text": [GmeInput(text=t) for t in TEXTS],
        "image": [GmeInput(image=p) for p in pics],
        "fused": [GmeInput(text=t, image=p, instruction="Find the passage about the image.") for t, p in zip(TEXTS, pics)],
    }
    need = _threshold(args.gme_min_cosine, cuda, 0.99, 0.99999)
    out = []
    for kind, inputs in kinds.items():
        ref, ms_ref = timed(reference.encode, inputs, len(inputs))
        cand, ms_cand = timed(candidate.encode, inputs, len(inputs))
        cos, max_abs = cosines(ref, cand)
        dtype = str(candidate.model.dtype).removeprefix("torch.")
        out.append(Result("gme", kind, float(cos.min()), need, True, max_abs, ms_cand, ms_ref,
                          f"({len(inputs)} inputs, {device} {dtype} vs cpu float32)"))
    return out


def check_clip(args, device: str, work: Path) -> list[Result]:
    from pipeline.models.clip import ClipConfig, ClipModel

    name = args.clip or f"local-dir:{_tiny('clip', work)}"
    cfg = ClipConfig(model=name, batch_size=8)
    reference, candidate = ClipModel(name, cfg, device="cpu"), ClipModel(name, cfg, device=device)
    need = _threshold(args.clip_min_cosine, device != "cpu", 0.999, 0.99999)
    out = []
    pics = images(8, seed=1)
    for what, ref_fn, cand_fn, inputs in (
        ("image", reference.encode_images, candidate.encode_images, pics),
        ("text", reference.encode_texts, candidate.encode_texts, TEXTS * 2),
    ):
        ref, ms_ref = timed(ref_fn, inputs)
        cand, ms_cand = timed(cand_fn, inputs)
        cos, max_abs = cosines(ref, cand)
        out.append(Result("clip", what, float(cos.min()), need, True, max_abs, ms_cand, ms_ref,
                          f"({len(inputs)} inputs, {device} float32 vs cpu float32)"))
    return out


def check_diffusion(args, device: str, work: Path) -> list[Result]:
    import numpy as np

    from pipeline.models.diffusion import DiffusionConfig, Drawer

    path = args.diffusion or str(_tiny("diffusion", work))
    cuda = device != "cpu"
    size = {"height": 64, "width": 64} if not args.diffusion else {}
    reference = Drawer(path, DiffusionConfig(dtype="float32", steps=args.diffusion_steps, **size), device="cpu")
    candidate = Drawer(path, DiffusionConfig(dtype="float16" if cuda else "float32", steps=args.diffusion_steps,
                                             **size), device=device)
    prompts, seeds = ["a lighthouse on a cliff", "a bowl of ripe pears"], [11, 12]
    ref, ms_ref = timed(reference.draw, prompts, seeds)
    cand, ms_cand = timed(candidate.draw, prompts, seeds)
    a = np.stack([np.asarray(im, np.float64) for im in ref])
    b = np.stack([np.asarray(im, np.float64) for im in cand])
    diff = np.abs(a - b)
    blank = [i for i, im in enumerate(b) if not np.isfinite(im).all() or im.max() - im.min() < 1]
    need = _threshold(args.diffusion_max_mean_diff, cuda, 8.0, 0.5)
    value = float("inf") if blank else float(diff.mean())
    note = f"blank or non-finite candidate image(s) {blank}; " if blank else ""
    dtype = "float16" if cuda else "float32"
    return [Result("diffusion", "image", value, need, False, float(diff.max()), ms_cand, ms_ref,
                   f"({note}{len(prompts)} images {a.shape[2]}x{a.shape[1]}, {args.diffusion_steps} steps, "
                   f"{device} {dtype} vs cpu float32)")]


def _threshold(given: float | None, gpu: bool, on_gpu: float, on_cpu: float) -> float:
    """The threshold asked for, else the default for the comparison made (a GPU's dtype, or fp32 vs fp32)."""
    if given is not None:
        return given
    return on_gpu if gpu else on_cpu


def _tiny(name: str, work: Path) -> Path:
    from pipeline.models.tiny import TINY_BUILDERS

    return TINY_BUILDERS[name](work / "tiny" / name)


CHECKS = {"gme": (check_gme, None), "clip": (check_clip, "open_clip"), "diffusion": (check_diffusion, "diffusers")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (float32 vs float32)")
    parser.add_argument("--checks", default="gme,clip,diffusion", help="comma-separated subset of gme,clip,diffusion")
    parser.add_argument("--work", default="/tmp/fusegen-gpu-check", help="where the tiny models are built")
    parser.add_argument("--gme", help="a local GME checkpoint instead of the tiny random one")
    parser.add_argument("--clip", help="an open_clip name (local-dir:PATH) instead of the tiny random one")
    parser.add_argument("--diffusion", help="a local diffusers pipeline instead of the tiny random one")
    parser.add_argument("--gme-min-cosine", type=float,
                        help="per input; default 0.99 for bf16 vs fp32, 0.99999 with --device cpu")
    parser.add_argument("--clip-min-cosine", type=float,
                        help="default 0.999 for CUDA vs CPU (TF32 convolutions), 0.99999 with --device cpu")
    parser.add_argument("--diffusion-max-mean-diff", type=float,
                        help="mean absolute pixel difference on 0..255; default 8 for fp16 vs fp32, 0.5 on cpu")
    parser.add_argument("--diffusion-steps", type=int, default=4)
    parser.add_argument("--strict", action="store_true", help="a skipped check (library absent) fails")
    args = parser.parse_args(argv)
    wanted = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in CHECKS]
    if unknown:
        parser.error(f"unknown check(s) {unknown}; known: {', '.join(CHECKS)}")

    sys.meta_path.insert(0, _Absent())
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        for module in MODEL_MODULES:
            importlib.import_module(module)
    except ImportError as exc:
        print(f"FAIL imports: {module} needs a package the GPU machine lacks: {exc}")
        return 2
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ABSENT)
    print(f"ok   imports: {', '.join(MODEL_MODULES)} without {' / '.join(ABSENT)}{' (leaked ' + str(leaked) + ')' if leaked else ''}")

    import torch

    device = args.device
    if device != "cpu" and not torch.cuda.is_available():
        print(f"FAIL device: {device} asked for but torch {torch.__version__} sees no CUDA device")
        return 2
    gpu = torch.cuda.get_device_name(torch.device(device)) if device != "cpu" else "none (cpu run)"
    versions = {name: _version(name) for name in ("torch", "transformers", "diffusers", "open_clip")}
    print("env  " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; device {device}: {gpu}")

    work = Path(args.work)
    results: list[Result] = []
    skipped = []
    for name in wanted:
        fn, needs = CHECKS[name]
        if needs and importlib.util.find_spec(needs) is None:
            skipped.append(name)
            print(f"SKIP {name}: {needs} is not importable here (carry its wheels in .whl/, see scripts/gpu_check.sh)")
            continue
        started = time.perf_counter()
        for result in fn(args, device, work):
            results.append(result)
            print(result.line(), flush=True)
        print(f"     {name}: {time.perf_counter() - started:.1f} s with loading", flush=True)
    failed = [r for r in results if not r.ok]
    print(f"gpu_check: {len(results) - len(failed)} passed, {len(failed)} failed, {len(skipped)} skipped "
          f"({', '.join(skipped) or 'none'})")
    if failed or (args.strict and skipped):
        return 1
    return 0


def _version(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return "absent"
    return str(getattr(importlib.import_module(module), "__version__", "?"))


if __name__ == "__main__":
    raise SystemExit(main())
