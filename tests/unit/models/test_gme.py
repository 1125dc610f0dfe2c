"""pipeline/models/gme.py: GME embeddings equal the released recipe computed step by step, on the tiny model.

The reference here is written out from the released `gme_inference.py`: the chat string by hand, the
processor, input embeddings with the image features put at the image tokens, the text decoder with its own
(sequential) positions, the last non-padding hidden state, L2 normalisation. The tiny checkpoint is saved
in the released layout, so every test also goes through transformers' conversion of that layout.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.errors import PipelineConfigError
from pipeline.models.gme import (
    GmeConfig,
    GmeEmbedder,
    GmeImageError,
    GmeInput,
    load_gme,
    render_text,
    resize_for_gme,
)
from pipeline.models.sources import resolve_model

SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "gme_render_text.txt"
CFG = GmeConfig(min_image_tokens=4, max_image_tokens=64, max_length=256)
QUERY = "Find an image that matches the given text."
SYSTEM = "You are a helpful assistant."
VISION = "<|vision_start|><|image_pad|><|vision_end|>"


def noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (height, width, 3), dtype=np.uint8))


# Sides are multiples of 28 inside both the config's and the processor's token bounds: every resize is a no-op.
IMG_A, IMG_B = noise(84, 56, seed=1), noise(112, 140, seed=2)


def chat(user: str, system: str = SYSTEM) -> str:
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n<|endoftext|>"
    )


# (id, input, the string and image the released script would build for it)
CASES = [
    ("query text", GmeInput(text="What is the name of this bridge?", instruction=QUERY),
     chat("What is the name of this bridge?", QUERY), None),
    ("candidate image", GmeInput(image=IMG_A), chat(VISION), IMG_A),
    ("fused query", GmeInput(text="When was this tower built?", image=IMG_B, instruction=QUERY),
     chat(VISION + "When was this tower built?", QUERY), IMG_B),
    ("titled passage", GmeInput(text="It opened in 1937.", title="Golden Gate Bridge"),
     chat("Golden Gate Bridge It opened in 1937."), None),
    ("titled fused passage", GmeInput(text="A tower in Paris.", title="Eiffel Tower", image=IMG_A),
     chat(VISION + "Eiffel Tower A tower in Paris."), IMG_A),
]  # fmt: skip


@pytest.fixture(scope="session")
def gme_path(tmp_path_factory) -> str:
    path, _ = resolve_model("tiny:gme", tmp_path_factory.mktemp("gme-cache"))
    return path


@pytest.fixture(scope="session")
def embedder(gme_path) -> GmeEmbedder:
    return GmeEmbedder(gme_path, CFG)


@pytest.fixture(scope="session")
def reference(gme_path):
    """Model and processor of its own, loaded the plain way."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(gme_path).eval()
    return model, AutoProcessor.from_pretrained(gme_path)


def reference_embed(reference, texts: list[str], images: list, padding_side: str = "right") -> np.ndarray:
    model, processor = reference
    enc = processor(
        text=texts, images=images or None, padding=True, padding_side=padding_side,
        truncation=True, max_length=CFG.max_length, return_tensors="pt",
    )  # fmt: skip
    with torch.no_grad():
        embeds = model.get_input_embeddings()(enc["input_ids"])
        if images:
            features = model.model.visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"]).pooler_output
            embeds[enc["input_ids"] == model.config.image_token_id] = features
        out = model.model.language_model(
            inputs_embeds=embeds, attention_mask=enc["attention_mask"], output_hidden_states=True
        )
    last = enc["attention_mask"].sum(dim=1) - 1
    pooled = out.hidden_states[-1][torch.arange(len(texts)), last]
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def case_reference(reference, cases) -> np.ndarray:
    """Each case alone, as the released script embeds a batch of one."""
    rows = [reference_embed(reference, [text], [img] if img else []) for _, _, text, img in cases]
    return np.concatenate(rows)


# --- parity with the released computation -------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_encode_equals_the_released_computation(embedder, reference, case):
    np.testing.assert_allclose(embedder.encode([case[1]]), case_reference(reference, [case]), atol=1e-5)


@pytest.mark.parametrize("batch_size", [2, 5])
def test_a_mixed_batch_equals_its_inputs_embedded_one_by_one(embedder, reference, batch_size):
    got = embedder.encode([c[1] for c in CASES], batch_size=batch_size)
    np.testing.assert_allclose(got, case_reference(reference, CASES), atol=1e-5)


def test_pooling_at_the_mask_length_needs_right_padding(reference):
    texts, images = [c[2] for c in CASES], [c[3] for c in CASES if c[3] is not None]
    _, processor = reference
    lengths = processor(text=texts, images=images, padding=True, return_tensors="pt")["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == len(CASES)  # every row is padded by a different amount
    alone = case_reference(reference, CASES)
    np.testing.assert_allclose(reference_embed(reference, texts, images), alone, atol=1e-5)
    # Left-padded, index mask length - 1 lands before the row's end (RoPE is shift-invariant, so the
    # hidden states themselves would be right): every padded row then comes out wrong.
    left = reference_embed(reference, texts, images, padding_side="left")
    assert np.abs(left - alone).max(axis=1)[lengths < lengths.max()].min() > 1e-3


def test_images_get_sequential_positions_as_released_not_transformers_mrope(embedder, reference):
    model, processor = reference
    enc = processor(text=[CASES[2][2]], images=[IMG_B], return_tensors="pt")
    with torch.no_grad():  # transformers' own forward: 3D M-RoPE positions for the image tokens
        hidden = model.model(**enc).last_hidden_state[0, -1]
    mrope = torch.nn.functional.normalize(hidden, dim=0).numpy()
    assert np.abs(embedder.encode([CASES[2][1]])[0] - mrope).max() > 1e-3


# --- output contract and bad inputs -------------------------------------------------------------------


def test_rows_are_unit_float32_vectors_in_input_order(embedder):
    inputs = [c[1] for c in CASES]
    vecs = embedder.encode(inputs, batch_size=3)
    assert vecs.shape == (len(CASES), embedder.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.encode(inputs[::-1], batch_size=3), vecs[::-1], atol=1e-5)
    assert embedder.encode([]).shape == (0, embedder.dim)


EMPTY = [GmeInput(), GmeInput(text="  "), GmeInput(text="", title="", instruction=QUERY)]


@pytest.mark.parametrize("empty", EMPTY)
def test_an_input_with_nothing_to_embed_is_a_value_error_naming_it(embedder, empty):
    with pytest.raises(ValueError, match="input 1 has no text, title or image"):
        embedder.encode([GmeInput(text="fine"), empty])


def test_an_image_the_processor_would_refuse_raises_with_its_reject_reason(embedder):
    with pytest.raises(GmeImageError) as err:
        embedder.encode([GmeInput(text="a very long strip", image=Image.new("RGB", (1000, 4)))])
    assert err.value.reason == "error:image_aspect_ratio"


def test_the_processor_bounds_images_by_the_config_not_the_checkpoint(embedder):
    grid = embedder.processor.image_processor(images=[Image.new("RGB", (2000, 1500))])["image_grid_thw"]
    assert int(grid.prod()) // 4 <= CFG.max_image_tokens  # the checkpoint's own bound is 16384 tokens


def test_config_rejects_a_max_length_that_would_cut_into_images():
    with pytest.raises(PipelineConfigError, match="max_length"):
        GmeConfig(max_length=1000, max_image_tokens=1024)
    with pytest.raises(PipelineConfigError, match="dtype"):
        GmeConfig(dtype="int8")


# --- the chat string ----------------------------------------------------------------------------------


def test_render_text_matches_snapshot():
    rendered = "".join(f"--- {name}\n{render_text(inp)}\n" for name, inp, _, _ in CASES)
    if os.environ.get("FUSEGEN_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(rendered, encoding="utf-8")
    assert rendered == SNAPSHOT.read_text(encoding="utf-8")


def test_candidate_string_is_the_qwen2vl_chat_format_plus_endoftext(embedder):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "A tower."}]}]
    chat_text = embedder.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_text(GmeInput(text="A tower.", image=IMG_A)) == chat_text + "<|endoftext|>"


# --- loading the released layout ----------------------------------------------------------------------


def test_released_layout_loads_with_the_saved_weights_not_random_ones(gme_path):
    from safetensors.torch import load_file

    saved = load_file(Path(gme_path) / "model.safetensors")
    loaded = load_gme(gme_path, torch.float32).state_dict()
    # Released names under current transformers: visual.* -> model.visual.*, model.* -> model.language_model.*
    renamed = {}
    for key, tensor in saved.items():
        top, rest = key.split(".", 1)
        renamed[{"visual": "model.visual.", "model": "model.language_model."}[top] + rest] = tensor
    assert set(loaded) - set(renamed) == {"lm_head.weight"}  # nothing else was initialised at random
    assert all(torch.equal(loaded[k], v) for k, v in renamed.items())


def test_the_absent_lm_head_is_not_reported_but_plain_loading_reports_it(gme_path, caplog):
    from transformers import Qwen2VLForConditionalGeneration

    def reported() -> list[str]:
        return [r.getMessage() for r in caplog.records if "LOAD REPORT" in r.getMessage()]

    with caplog.at_level(logging.WARNING):
        Qwen2VLForConditionalGeneration.from_pretrained(gme_path)
        assert len(reported()) == 1 and "lm_head.weight" in reported()[0]
        caplog.clear()
        load_gme(gme_path, torch.float32)
        assert reported() == []


def test_a_checkpoint_missing_other_weights_is_an_error(gme_path, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = Path(shutil.copytree(gme_path, tmp_path / "broken"))
    weights = load_file(broken / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PipelineConfigError, match=r"missing: \['model.language_model.norm.weight'\]"):
        load_gme(str(broken), torch.float32)


# --- resize_for_gme -----------------------------------------------------------------------------------


@st.composite
def image_sizes(draw) -> tuple[int, int]:
    short = draw(st.integers(0, 300))
    long = draw(st.integers(short, min(3000, max(1, short) * 400)))
    return (short, long) if draw(st.booleans()) else (long, short)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=image_sizes(), min_tokens=st.integers(4, 300), extra=st.integers(0, 800))
def test_resized_sides_are_multiples_of_28_within_the_token_bounds_or_rejected_with_a_reason(
    size, min_tokens, extra
):
    width, height = size
    try:
        out = resize_for_gme(Image.new("L", size), min_tokens, min_tokens + extra)
    except GmeImageError as err:
        assert err.reason == ("error:image_too_small" if min(size) == 0 else "error:image_aspect_ratio")
        return
    assert max(width, height) <= 200 * min(width, height)
    assert out.mode == "RGB" and out.width % 28 == 0 and out.height % 28 == 0
    assert min_tokens <= out.width * out.height // 784 <= min_tokens + extra


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=image_sizes())
def test_default_bounds_keep_every_image_up_to_200_to_1_and_the_processor_would_not_resize_it(size):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    if min(size) == 0 or max(size) > 200 * min(size):
        return
    cfg = GmeConfig()
    out = resize_for_gme(Image.new("RGB", size), cfg.min_image_tokens, cfg.max_image_tokens)
    # A thin image can round past 200:1 (as in the released pipeline): the embedder skips the processor's
    # resize, which would refuse it; every other output is one the processor leaves as it is.
    if max(out.size) <= 200 * min(out.size):
        bounds = {"min_pixels": cfg.min_image_tokens * 784, "max_pixels": cfg.max_image_tokens * 784}
        assert smart_resize(out.height, out.width, factor=28, **bounds) == (out.height, out.width)


def test_resize_is_the_released_two_bicubic_steps():
    img = noise(600, 400, seed=3).convert("RGBA")
    # The script's step: 400 x 600 -> 392 x 588 (14 x 21 units of 28, 294 tokens: inside 4..16384).
    # The token bounds: 294 > 64 tokens, beta = sqrt(294 / 64) -> floor(14 / beta) x floor(21 / beta) = 6 x 9.
    expected = img.convert("RGB").resize((588, 392), Image.BICUBIC).resize((252, 168), Image.BICUBIC)
    out = resize_for_gme(img, 4, 64)
    assert out.size == (252, 168) and out.tobytes() == expected.tobytes()


def test_an_image_without_pixels_is_too_small():
    with pytest.raises(GmeImageError) as err:
        resize_for_gme(Image.new("RGB", (0, 10)), 4, 64)
    assert err.value.reason == "error:image_too_small"
