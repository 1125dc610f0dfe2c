"""Vision-language prompts through the real multimodal path: `ray.data.llm`'s prepare-multimodal stage
and the vLLM engine on a tiny local Qwen2-VL, images from the rows' image column as data URLs.

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


@pytest.fixture(scope="module")
def vl_out(tmp_path_factory) -> list[dict]:
    import ray

    from pipeline.models.vllm_vision import vllm_vision_generate
    from tests.vllm.tiny_vl import build_tiny_qwen2_vl

    model = build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny") / "qwen2-vl")
    messages = json.dumps([{"role": "user", "content": "What is shown?"}])
    rows = [
        {"id": "red", MESSAGES: messages, "image": {"bytes": _png((200, 30, 40)), "path": None}},
        {"id": "blue", MESSAGES: messages, "image": {"bytes": _png((20, 30, 200)), "path": None}},
        {"id": "none", MESSAGES: messages, "image": {"bytes": None, "path": None}},
        {"id": "not-an-image", MESSAGES: messages, "image": {"bytes": b"not an image", "path": None}},
        {"id": "cut", MESSAGES: messages, "image": {"bytes": _png((20, 200, 30))[:60], "path": None}},
    ]
    cfg = cpu_engine(max_model_len=1024, max_new_tokens=8)
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024)
    try:
        ds = ray.data.from_items(rows)
        out = vllm_vision_generate(ds, cfg, str(model), None, Resources(batch_size=4), "describe")
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
