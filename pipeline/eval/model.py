"""The dual encoder `fusegen eval` trains: adapters over frozen tower features, fused queries, InfoNCE.

Query side, score fusion as UniIR's CLIP-SF: the text and image embeddings are each L2-normalised,
summed and normalised again (a query without an image is its text alone). Candidate side: passages
through the text features (GME rows) or images through the image features (MegaPairs rows). Each side
has one linear adapter into the candidate space; an adapter whose input already lives there starts as
the identity (so the untuned model is the towers as they are), one that crosses spaces starts as a
seeded random projection; training learns a correction to either, kept small by weight decay.

Loss: InfoNCE over the batch's positives (in-batch negatives) plus each row's hard negatives, at a fixed
temperature. A candidate that *is* a row's positive (two rows of one passage in a batch, or a passage
that is one row's positive and another's negative) is masked out of that row's negatives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import EvalError


class Adapter(nn.Module):
    """y = (W0 + D) x: W0, frozen, is the identity when the dims agree, else a seeded random projection;
    D, the trained part, starts at zero, so weight decay pulls the adapter back towards the towers."""

    def __init__(self, d_in: int, d_out: int, generator: torch.Generator) -> None:
        super().__init__()
        if d_in == d_out:
            base = torch.eye(d_out)
        else:
            base = torch.randn(d_out, d_in, generator=generator) / d_in**0.5
        self.register_buffer("base", base)
        self.delta = nn.Parameter(torch.zeros(d_out, d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.base + self.delta).T


class FusedDualEncoder(nn.Module):
    def __init__(self, text_dim: int, image_dim: int, cand_dim: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.q_text = Adapter(text_dim, cand_dim, g)
        self.q_image = Adapter(image_dim, cand_dim, g) if image_dim else None
        self.cand = Adapter(cand_dim, cand_dim, g)

    def queries(self, text: torch.Tensor, image: torch.Tensor | None, has_image: torch.Tensor | None) -> torch.Tensor:
        z = F.normalize(self.q_text(text), dim=-1)
        if self.q_image is not None and image is not None:
            z = z + F.normalize(self.q_image(image), dim=-1) * has_image[:, None]
        return F.normalize(z, dim=-1)

    def candidates(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.cand(feats), dim=-1)


def info_nce(q: torch.Tensor, cands: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean InfoNCE of B queries over `cands`: the B positives first (row i's is candidate i), then any
    hard negatives; `ids` are the candidates' pool ids, so a repeat of a row's positive is masked."""
    b = q.shape[0]
    logits = q @ cands.T / temperature
    arange = torch.arange(b, device=q.device)
    same = ids[None, :] == ids[:b, None]
    same[arange, arange] = False
    if bool(same.any()):
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, arange)


@dataclass
class Tensors:
    """A query set as tensors: text / image feature rows, positive and negative candidate ids."""

    text: torch.Tensor
    image: torch.Tensor | None
    has_image: torch.Tensor | None
    pos: torch.Tensor
    negs: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.pos.shape[0])


def train(model: FusedDualEncoder, rows: Tensors, pool: torch.Tensor, steps: int, batch_size: int, lr: float,
          weight_decay: float, temperature: float, seed: int,
          on_step: Callable[[int, float], None] | None = None) -> dict:
    """`steps` AdamW steps over seeded batches (a fresh permutation each epoch); returns the losses."""
    if len(rows) < 2:
        raise EvalError(f"eval: {len(rows)} training row(s): InfoNCE needs at least 2 per batch")
    batch = min(batch_size, len(rows))
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    order, at, losses = rng.permutation(len(rows)), 0, []
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        if at + batch > len(order):
            order, at = rng.permutation(len(rows)), 0
        idx = torch.as_tensor(order[at : at + batch], device=pool.device)
        at += batch
        loss = _batch_loss(model, rows, pool, idx, temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    model.eval()
    return {"steps": steps, "batch_size": batch, "seconds": time.perf_counter() - started,
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None}


def _batch_loss(model: FusedDualEncoder, rows: Tensors, pool: torch.Tensor, idx: torch.Tensor,
                temperature: float) -> torch.Tensor:
    image = rows.image[idx] if rows.image is not None else None
    has = rows.has_image[idx] if rows.has_image is not None else None
    q = model.queries(rows.text[idx], image, has)
    ids = rows.pos[idx]
    if rows.negs is not None and rows.negs.shape[1]:
        ids = torch.cat([ids, rows.negs[idx].reshape(-1)])
    return info_nce(q, model.candidates(pool[ids]), ids, temperature)


@torch.no_grad()
def score(model: FusedDualEncoder, rows: Tensors, pool: torch.Tensor, chunk: int = 1024) -> np.ndarray:
    """(queries, pool) cosine scores."""
    model.eval()
    cands = model.candidates(pool)
    out = []
    for start in range(0, len(rows), chunk):
        sl = slice(start, start + chunk)
        image = rows.image[sl] if rows.image is not None else None
        has = rows.has_image[sl] if rows.has_image is not None else None
        out.append((model.queries(rows.text[sl], image, has) @ cands.T).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, pool.shape[0]), np.float32)
