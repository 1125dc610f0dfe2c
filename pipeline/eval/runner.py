"""`run_eval`: train the compared models on the input's train split and rank its validation queries.

Variants (config `variants`): `untuned` (the towers, adapters at their start), `mined` (InfoNCE over
in-batch plus each row's hard negatives), `in_batch` (the same rows, in-batch negatives only: does
mining help?), and `image_source` (one model per image source, trained on that source's rows alone,
where the run has rows of at least two sources). Every variant runs under each seed; the report keeps
each seed's numbers and their mean and standard deviation. No Ray: the export's files are read directly.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.errors import EvalError
from pipeline.eval.config import EvalConfig
from pipeline.eval.data import EvalData, EvalQuery, load
from pipeline.eval.metrics import by_task, ranks
from pipeline.eval.model import FusedDualEncoder, Tensors, score, train
from pipeline.eval.sets import load_eval_set
from pipeline.eval.towers import Features, Towers, embed_features
from pipeline.logging import get_logger

log = get_logger(__name__)
# Hard negatives per row when the config leaves it open: the smallest count in the run, at most this.
MAX_DEFAULT_NEGATIVES = 8

Progress = Callable[[str, int, int, float], None]


@dataclass
class Variant:
    name: str
    description: str
    rows: list[EvalQuery]
    negatives: int | None
    trained: bool = True


class Space:
    """The input as tensors on one device: the candidate pool's features, query sets, id lookups."""

    def __init__(self, data: EvalData, feats: Features, device: str, image_tower: bool) -> None:
        self.data, self.feats, self.device = data, feats, device
        self.mode = data.candidate_mode
        self.keys = sorted(data.candidates)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.pool = self.candidate_matrix(data.candidates, self.keys)
        self.image_tower = image_tower

    def candidate_matrix(self, candidates: dict, keys: list[str]) -> torch.Tensor:
        if self.mode == "text":
            rows = [self.feats.text_index[candidates[k].text] for k in keys]
            return torch.as_tensor(self.feats.text[rows], device=self.device)
        missing = [k for k in keys if candidates[k].image is None]
        if missing:
            raise EvalError(f"eval: image candidates without an image: {missing[:5]}")
        rows = [self.feats.image_index[candidates[k].image] for k in keys]
        return torch.as_tensor(self.feats.image[rows], device=self.device)

    def tensors(self, queries: list[EvalQuery], negatives: int | None, index: dict[str, int] | None = None) -> Tensors:
        index = index or self.index
        text = torch.as_tensor(self.feats.text[[self.feats.text_index[q.text] for q in queries]], device=self.device)
        image = has = None
        if self.image_tower and self.feats.image.shape[0]:
            at = [self.feats.image_index.get(q.image, 0) if q.image else 0 for q in queries]
            image = torch.as_tensor(self.feats.image[at], device=self.device)
            has = torch.as_tensor([1.0 if q.image else 0.0 for q in queries], device=self.device)
        pos = torch.as_tensor([index[q.pos] for q in queries], device=self.device)
        negs = None
        if negatives:
            negs = torch.as_tensor([[index[k] for k in q.negs[:negatives]] for q in queries], device=self.device)
        return Tensors(text, image, has, pos, negs)


def variants(cfg: EvalConfig, data: EvalData, negatives: int) -> tuple[list[Variant], dict]:
    """The variants to train, and what was left out of training (rows with too few negatives)."""
    rows = [q for q in data.train if len(q.negs) >= negatives]
    notes = {"fewer_negatives": len(data.train) - len(rows)}
    out = [Variant("untuned", "the frozen towers, adapters at their start (no training)", [], None, trained=False)]
    if "mined" in cfg.variants:
        out.append(Variant("mined", f"in-batch + {negatives} mined hard negative(s) per row", rows, negatives))
    if "in_batch" in cfg.variants:
        out.append(Variant("in_batch", "the same rows, in-batch negatives only", rows, None))
    sources = Counter(q.source for q in rows if q.source)
    if "image_source" in cfg.variants and len(sources) < 2:
        # One source: its model would be `mined` again.
        notes["image_source"] = f"not run: the training rows have {len(sources)} image source(s) recorded"
    elif "image_source" in cfg.variants:
        for source in sorted(sources):
            picked = [q for q in rows if q.source == source]
            if len(picked) < 2:
                notes[f"source:{source}"] = f"not run: {len(picked)} training row(s)"
                continue
            out.append(Variant(f"source:{source}", f"only the rows whose query image is {source}", picked, negatives))
    return out, notes


def pick_negatives(cfg: EvalConfig, data: EvalData) -> int:
    if cfg.train.negatives is not None:
        return cfg.train.negatives
    return min(min(len(q.negs) for q in data.train), MAX_DEFAULT_NEGATIVES)


def run_eval(path: str, cfg: EvalConfig, progress: Progress | None = None) -> dict:
    """Train and evaluate every variant under every seed; returns the report (see report.py)."""
    started = time.perf_counter()
    data = load(path, cfg)
    towers = Towers(cfg)
    if data.candidate_mode == "image" and towers.image_model is None:
        raise EvalError("eval: this input's candidates are images (MegaPairs rows): set `image.model`")
    sets = [load_eval_set(p, data, cfg) for p in cfg.eval_sets]
    t_embed = time.perf_counter()
    feats = embed_features(towers, data, [t for s in sets for t in s.texts()],
                           {k: v for s in sets for k, v in s.data.images.items()})
    embed_s = time.perf_counter() - t_embed
    space = Space(data, feats, towers.device, towers.image_model is not None)
    negatives = pick_negatives(cfg, data)
    planned, notes = variants(cfg, data, negatives)
    validation = space.tensors(data.validation, None)
    set_spaces = [(s, s.space(space)) for s in sets]
    image_dim = feats.image.shape[1] if towers.image_model is not None and feats.image.shape[0] else 0
    results = {}
    threads = torch.get_num_threads()
    if towers.device == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    try:
        for v in planned:
            results[v.name] = _run_variant(v, cfg, space, validation, set_spaces, image_dim, progress)
    finally:
        torch.set_num_threads(threads)
    return {
        "data": data, "towers": towers.describe(), "negatives": negatives, "notes": notes, "variants": results,
        "planned": planned, "sets": sets, "embed_s": embed_s, "total_s": time.perf_counter() - started,
    }


def _run_variant(v: Variant, cfg: EvalConfig, space: Space, validation: Tensors, set_spaces: list,
                 image_dim: int, progress: Progress | None) -> dict:
    seeds = {}
    text_dim, cand_dim = space.feats.text.shape[1], int(space.pool.shape[1])
    rows = space.tensors(v.rows, v.negatives) if v.trained else None
    for seed in cfg.train.seeds:
        torch.manual_seed(seed)
        model = FusedDualEncoder(text_dim, image_dim, cand_dim, seed).to(space.device)
        trained = None
        if v.trained:
            def step(i: int, loss: float, name: str = v.name, s: int = seed) -> None:
                if progress is not None:
                    progress(f"{name} seed {s}", i, cfg.train.steps, loss)

            t = cfg.train
            trained = train(model, rows, space.pool, t.steps, t.batch_size, t.lr, t.weight_decay, t.temperature,
                            seed, step)
        t0 = time.perf_counter()
        scores = score(model, validation, space.pool)
        metrics = by_task(ranks(scores, validation.pos.cpu().numpy()), [q.task for q in space.data.validation],
                          cfg.ks, cfg.mrr_k)
        entry = {"metrics": metrics, "eval_s": time.perf_counter() - t0, "train": trained}
        if set_spaces:
            entry["eval_sets"] = {s.name: s.evaluate(model, sp, cfg) for s, sp in set_spaces}
        seeds[seed] = entry
    return {"description": v.description, "train_rows": len(v.rows), "negatives": v.negatives,
            "seeds": seeds, **aggregate([e["metrics"] for e in seeds.values()])}


def aggregate(per_seed: list[dict]) -> dict:
    """{"mean": {task: {metric: x}}, "std": ...} over seeds (population std; 0 for one seed)."""
    mean: dict = {}
    std: dict = {}
    for task in per_seed[0]:
        mean[task], std[task] = {}, {}
        for metric, first in per_seed[0][task].items():
            values = [m[task][metric] for m in per_seed if m.get(task, {}).get(metric) is not None]
            if metric == "queries":
                mean[task][metric] = first
                continue
            mean[task][metric] = statistics.fmean(values) if values else None
            std[task][metric] = statistics.pstdev(values) if len(values) > 1 else (0.0 if values else None)
    return {"mean": mean, "std": std}
