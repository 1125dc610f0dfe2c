"""Vision-language prompts through the real multimodal path: `ray.data.llm`'s vLLM engine on a tiny local
Qwen2-VL, the prompts rendered and the images (from the rows' image column) decoded in the row map before
it, and the answers exactly raw `vllm.LLM.chat`'s for the same conversations (data-URL image parts).

vLLM 0.29's Qwen2-VL model imports torchvision: scripts/install_vllm.sh builds the venv on PyPI's default
torch==2.13.0 (a CUDA build that runs without a GPU) and its torchvision==0.28.0. Where torchvision does
not load, these tests are skipped with the import error (tiny_vl.torchvision_error).
"""

from __future__ import annotations

import io
import json

import pytest

from pipeline.models.llm import LLM_ERROR, MESSAGES, RAW
from pipeline.stage import Resources
from tests.vllm.tiny_vl import cpu_engine, torchvision_error

pytestmark = pytest.mark.skipif(bool(torchvision_error()), reason=torchvision_error() or "-")


def _png(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (60, 40), colour).save(buf, format="PNG")
    return buf.getvalue()


MESSAGES_JSON = json.dumps([{"role": "system", "content": "Answer briefly."},
                            {"role": "user", "content": "What is shown?"}])
ENGINE = cpu_engine(max_model_len=1024, max_new_tokens=8)


@pytest.fixture(scope="module")
def vl_model(tmp_path_factory):
    from tests.vllm.tiny_vl import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny") / "qwen2-vl")


@pytest.fixture(scope="module")
def vl_out(vl_model) -> list[dict]:
    import ray

    from pipeline.models.vllm_vision import vllm_vision_generate

    messages = MESSAGES_JSON
    rows = [
        {"id": "red", MESSAGES: messages, "image": {"bytes": _png((200, 30, 40)), "path": None}},
        {"id": "blue", MESSAGES: messages, "image": {"bytes": _png((20, 30, 200)), "path": None}},
        {"id": "none", MESSAGES: messages, "image": {"bytes": None, "path": None}},
        {"id": "not-an-image", MESSAGES: messages, "image": {"bytes": b"not an image", "path": None}},
        {"id": "cut", MESSAGES: messages, "image": {"bytes": _png((20, 200, 30))[:60], "path": None}},
    ]
    cfg = ENGINE
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024)
    try:
        ds = ray.data.from_items(rows)
        out = vllm_vision_generate(ds, cfg, str(vl_model), None, Resources(batch_size=4), "describe")
        yield out.take_all()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def vl_rows(vl_out) -> dict[str, dict]:
    return {r["id"]: r for r in vl_out}


def test_rows_with_images_get_text_from_the_vlm(vl_rows):
    assert {
        k: (bool(r[RAW]), r[LLM_ERROR] in ("", "error:truncated_output"))
        for k, r in vl_rows.items()
        if k in ("red", "blue")
    } == {
        "red": (True, True),
        "blue": (True, True),
    }


def test_row_without_an_image_is_image_missing_and_keeps_its_columns(vl_rows):
    row = vl_rows["none"]
    # The prompt itself (`_messages`) is consumed, as by the vllm text backend; the row's own columns stay.
    assert (row[LLM_ERROR], row[RAW], row["id"], row["image"]) == (
        "error:image_missing",
        "",
        "none",
        {"bytes": None, "path": None},
    )


def test_rows_whose_image_is_unreadable_keep_that_reason_and_never_reach_the_engine(vl_rows):
    assert {k: (vl_rows[k][LLM_ERROR], vl_rows[k][RAW]) for k in ("not-an-image", "cut")} == {
        "not-an-image": ("error:image_not_an_image", ""),
        "cut": ("error:image_truncated", ""),
    }


def test_every_row_comes_back_once(vl_out):
    assert sorted(r["id"] for r in vl_out) == ["blue", "cut", "none", "not-an-image", "red"]


def test_answers_are_exactly_raw_vllm_chat_on_the_same_conversations(vl_rows, vl_model):
    """The row map renders the prompt and decodes the image itself; raw `LLM.chat` gets the conversation
    with a data-URL image part (what the prepare-multimodal stage used to be sent) and renders with vLLM's
    own chat parser. Same engine settings and sampling: the same tokens must come out."""
    import dataclasses
    import os

    from vllm import LLM, SamplingParams

    from pipeline.models.vllm_backend import vllm_sampling_params
    from pipeline.models.vllm_vision import attach_image, data_url

    os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{ENGINE.vllm_cpu_kvcache_gib:g}"
    llm = LLM(str(vl_model), max_model_len=ENGINE.max_model_len, gpu_memory_utilization=ENGINE.gpu_memory_utilization,
              enforce_eager=True, dtype=ENGINE.dtype)
    try:
        colours = {"red": (200, 30, 40), "blue": (20, 30, 200)}
        convs = [attach_image(json.loads(MESSAGES_JSON), data_url(_png(c))) for c in colours.values()]
        # Free text: no JSON grammar, as vllm_vision_generate sends with schema None.
        sampling = vllm_sampling_params(dataclasses.replace(ENGINE, guided=False), {})
        raw = llm.chat(convs, SamplingParams(**sampling), use_tqdm=False)
    finally:
        del llm
    assert {k: vl_rows[k][RAW] for k in colours} == {k: o.outputs[0].text for k, o in zip(colours, raw)}
