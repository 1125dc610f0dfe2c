"""`fusegen eval`'s training and evaluation loops vs a bare PyTorch loop of the same model and batch (issue 21).

    python bench/eval.py --rows 4096 --pool 20000 --queries 2000 --steps 200

Both sides get the same frozen features (seeded random, the shapes of the CPU default: 384-d MiniLM text,
512-d image, text candidates), the same batch of `--batch` rows with `--negatives` hard negatives each, the
same temperature and AdamW settings, on the same threads (`--threads`, 1 as eval's `cpu_threads`):
- eval: `pipeline.eval.model.train` (seeded batches, fused queries, masked InfoNCE) and `score` + the
  metrics (`ranks`, `by_task`);
- bare: a loop with two weight matrices per side written inline: normalise, sum, normalise,
  `cross_entropy` over [positives; negatives] without the duplicate mask, and for evaluation one matmul
  and a count of candidates at least the positive's score.
After one short warm-up run of each, each side runs `--rounds` times, alternating (eval, bare, eval, bare,
...), and keeps its best time (the machine is shared: the best of several is the least disturbed).
ratio = eval rate / bare rate (steps/s, queries/s); target >= 0.8.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

from pipeline.eval.metrics import by_task, ranks
from pipeline.eval.model import FusedDualEncoder, Tensors, score, train

TARGET = 0.8
TEXT_DIM, IMAGE_DIM = 384, 512


def data(rows: int, pool: int, queries: int, negatives: int) -> tuple[Tensors, Tensors, torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def feats(n: int, d: int) -> torch.Tensor:
        return F.normalize(torch.randn(n, d, generator=g), dim=-1)

    cands = feats(pool, TEXT_DIM)

    def tensors(n: int, negs: int) -> Tensors:
        pos = torch.randint(0, pool, (n,), generator=g)
        neg = torch.randint(0, pool, (n, negs), generator=g) if negs else None
        return Tensors(feats(n, TEXT_DIM), feats(n, IMAGE_DIM), torch.ones(n), pos, neg)

    return tensors(rows, negatives), tensors(queries, 0), cands


def eval_train(rows: Tensors, pool: torch.Tensor, steps: int, batch: int) -> float:
    model = FusedDualEncoder(TEXT_DIM, IMAGE_DIM, TEXT_DIM, seed=0)
    started = time.perf_counter()
    train(model, rows, pool, steps, batch, 1e-3, 0.01, 0.05, seed=0)
    return time.perf_counter() - started


def bare_train(rows: Tensors, pool: torch.Tensor, steps: int, batch: int) -> float:
    g = torch.Generator().manual_seed(0)
    base_t, base_i = torch.eye(TEXT_DIM), torch.randn(TEXT_DIM, IMAGE_DIM, generator=g) / IMAGE_DIM**0.5
    base_c = torch.eye(TEXT_DIM)
    deltas = [torch.zeros_like(b, requires_grad=True) for b in (base_t, base_i, base_c)]
    opt = torch.optim.AdamW(deltas, lr=1e-3, weight_decay=0.01)
    rng = np.random.default_rng(0)
    order, at = rng.permutation(len(rows)), 0
    target = torch.arange(batch)
    started = time.perf_counter()
    for _ in range(steps):
        if at + batch > len(order):
            order, at = rng.permutation(len(rows)), 0
        idx = torch.as_tensor(order[at : at + batch])
        at += batch
        wt, wi, wc = base_t + deltas[0], base_i + deltas[1], base_c + deltas[2]
        q = F.normalize(F.normalize(rows.text[idx] @ wt.T, dim=-1) + F.normalize(rows.image[idx] @ wi.T, dim=-1), dim=-1)
        ids = torch.cat([rows.pos[idx], rows.negs[idx].reshape(-1)])
        c = F.normalize(pool[ids] @ wc.T, dim=-1)
        loss = F.cross_entropy(q @ c.T / 0.05, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())
    return time.perf_counter() - started


def eval_score(queries: Tensors, pool: torch.Tensor) -> float:
    model = FusedDualEncoder(TEXT_DIM, IMAGE_DIM, TEXT_DIM, seed=0)
    started = time.perf_counter()
    scores = score(model, queries, pool)
    by_task(ranks(scores, queries.pos.numpy()), ["it2t"] * len(queries), (1, 5, 10), 10)
    return time.perf_counter() - started


@torch.no_grad()
def bare_score(queries: Tensors, pool: torch.Tensor) -> float:
    g = torch.Generator().manual_seed(0)
    wi = torch.randn(TEXT_DIM, IMAGE_DIM, generator=g) / IMAGE_DIM**0.5
    wt, wc = torch.eye(TEXT_DIM), torch.eye(TEXT_DIM)
    started = time.perf_counter()
    q = F.normalize(F.normalize(queries.text @ wt.T, dim=-1) + F.normalize(queries.image @ wi.T, dim=-1), dim=-1)
    s = q @ F.normalize(pool @ wc.T, dim=-1).T
    r = (s >= s[torch.arange(len(queries)), queries.pos][:, None]).sum(1)
    [float((r <= k).float().mean()) for k in (1, 5, 10)]
    float(torch.where(r <= 10, 1.0 / r, 0.0).mean())
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--pool", type=int, default=20000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--negatives", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows, queries, pool = data(args.rows, args.pool, args.queries, args.negatives)
    eval_train(rows, pool, 10, args.batch), bare_train(rows, pool, 10, args.batch)
    best = {"eval_train": 1e9, "bare_train": 1e9, "eval_score": 1e9, "bare_score": 1e9}
    for _ in range(args.rounds):
        best["eval_train"] = min(best["eval_train"], eval_train(rows, pool, args.steps, args.batch))
        best["bare_train"] = min(best["bare_train"], bare_train(rows, pool, args.steps, args.batch))
        best["eval_score"] = min(best["eval_score"], eval_score(queries, pool))
        best["bare_score"] = min(best["bare_score"], bare_score(queries, pool))
    print(f"machine: {machine()}")
    print(f"rows {args.rows}, pool {args.pool}, queries {args.queries}, steps {args.steps}, batch {args.batch}, "
          f"negatives {args.negatives}, threads {args.threads}")
    ok = True
    for what, unit, n in (("train", "steps/s", args.steps), ("score", "queries/s", args.queries)):
        mine, bare = n / best[f"eval_{what}"], n / best[f"bare_{what}"]
        ratio = mine / bare
        ok &= ratio >= TARGET
        print(f"{what}: eval {mine:.1f} {unit}, bare {bare:.1f} {unit}, ratio {ratio:.2f} (target >= {TARGET})")
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
