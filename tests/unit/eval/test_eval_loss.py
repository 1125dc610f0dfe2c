"""The InfoNCE loss on a constructed batch, its duplicate-positive mask, and the adapters' start."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.eval.model import FusedDualEncoder, info_nce


def test_info_nce_equals_the_hand_computed_cross_entropy():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    negs = torch.tensor([[[0.0, 1.0]], [[0.8, 0.6]]])
    loss = info_nce(q, torch.cat([pos, negs.reshape(-1, 2)]), torch.tensor([0, 1, 2, 3]), temperature=0.5)
    # Candidates [pos0, pos1, neg0, neg1]; row 0 scores [1, .6, 0, .8], row 1 [0, .8, 1, .6], over 0.5.
    def ce(scores, target):
        logits = [s / 0.5 for s in scores]
        return -logits[target] + math.log(sum(math.exp(x) for x in logits))
    expected = (ce([1, 0.6, 0, 0.8], 0) + ce([0, 0.8, 1, 0.6], 1)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_in_batch_only_uses_the_other_rows_positives():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = info_nce(q, pos, torch.tensor([0, 1]), temperature=1.0)
    assert float(loss) == pytest.approx(-1 + math.log(math.e + 1))


def test_a_candidate_that_is_the_rows_own_positive_is_not_its_negative():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    pos = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # Both rows share passage 7: each other's positive would be a false negative; masked, the loss is 0.
    masked = info_nce(q, pos, torch.tensor([7, 7]), temperature=0.1)
    assert float(masked) == pytest.approx(0.0, abs=1e-6)
    negs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    # Row 0's hard negative is passage 7 again (its own positive): masked too. What is left for each row
    # is its positive (score 10) and row 1's hard negative, passage 3 (score 0): hard negatives are shared
    # by the whole batch.
    also = info_nce(q, torch.cat([pos, negs.reshape(-1, 2)]), torch.tensor([7, 7, 7, 3]), temperature=0.1)
    assert float(also) == pytest.approx(-10 + math.log(math.exp(10) + 1), abs=1e-6)


def test_untuned_model_scores_the_towers_cosine_and_fuses_by_normalised_sum():
    model = FusedDualEncoder(text_dim=3, image_dim=2, cand_dim=3, seed=0)
    text = F.normalize(torch.tensor([[1.0, 2.0, 2.0]]), dim=-1)
    cand = F.normalize(torch.tensor([[2.0, 1.0, 2.0]]), dim=-1)
    alone = model.queries(text, torch.zeros(1, 2), torch.tensor([0.0]))
    assert float((alone @ model.candidates(cand).T).detach()) == pytest.approx(float(text @ cand.T), rel=1e-6)
    image = torch.tensor([[0.3, -1.0]])
    fused = model.queries(text, image, torch.tensor([1.0]))
    expected = F.normalize(text + F.normalize(image @ model.q_image.base.T, dim=-1), dim=-1)
    assert torch.allclose(fused, expected, atol=1e-6)
