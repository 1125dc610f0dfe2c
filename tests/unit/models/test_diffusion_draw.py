"""pipeline/models/diffusion.Drawer.draw: a CUDA OOM on a chunk is retried in halves; one prompt that still
does not fit propagates (never a row verdict). The diffusers pipeline is replaced by a deterministic fake
that runs out of memory above a chosen batch size (STYLE R17)."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.diffusion import DiffusionConfig, Drawer


class FakePipe:
    """Returns one 'image' (the prompt and its seed) per prompt; OOMs when given more than `fits` prompts."""

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.calls: list[int] = []

    def __call__(self, prompts, generator, **kwargs):
        self.calls.append(len(prompts))
        if len(prompts) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return type("Out", (), {"images": [(p, g.initial_seed()) for p, g in zip(prompts, generator)]})()


def drawer(pipe: FakePipe, batch_size: int) -> Drawer:
    d = Drawer.__new__(Drawer)
    d.torch, d.cfg, d.pipe = torch, DiffusionConfig(batch_size=batch_size), pipe
    return d


def test_an_oom_chunk_is_drawn_in_halves_with_every_row_keeping_its_seed():
    pipe = FakePipe(fits=2)
    prompts, seeds = [f"p{i}" for i in range(8)], list(range(100, 108))
    assert drawer(pipe, batch_size=8).draw(prompts, seeds) == list(zip(prompts, seeds))
    assert pipe.calls == [8, 4, 2, 2, 4, 2, 2]


def test_a_single_prompt_that_does_not_fit_propagates_the_oom():
    with pytest.raises(torch.OutOfMemoryError):
        drawer(FakePipe(fits=0), batch_size=4).draw(["a", "b"], [1, 2])
