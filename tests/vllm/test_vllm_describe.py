"""The describe stage's two-image prompt through the real multimodal path: its prompt step (images from
a run's image store as data URLs), `ray.data.llm` with `limit_mm_per_prompt={"image": 2}` and the vLLM
engine on the tiny local Qwen2-VL (`tiny:qwen2_vl`), then its parse step.

Skipped where vLLM's Qwen2-VL cannot load (no torchvision beside torch; see test_vllm_vision.py).
"""

from __future__ import annotations

import io

import pyarrow as pa
import pytest

from pipeline.stage import REASON, Resources
from tests.vllm.tiny_vl import cpu_engine, torchvision_error

pytestmark = pytest.mark.skipif(bool(torchvision_error()), reason=torchvision_error() or "-")


def _png(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    import ray

    from pipeline.config import to_dict
    from pipeline.io.image_store import IMAGE_REF, ImageStore
    from pipeline.models.tiny import build_tiny_qwen2_vl
    from pipeline.models.vlm import generate_text_with_images
    from pipeline.prompts import default_prompts_dir, load_sources
    from pipeline.stages.describe import PROMPTS, DescribeConfig, parse_batch, prompt_batch

    root = tmp_path_factory.mktemp("describe")
    model = build_tiny_qwen2_vl(root / "qwen2_vl")
    uri = str(root / "run")
    store = ImageStore.from_uri(uri)
    red, blue = store.put(_png((200, 30, 40), (60, 40)), "png", 60, 40), store.put(_png((20, 30, 200), (40, 40)), "png", 40, 40)
    table = pa.table({
        "id": ["red~blue", "blue~red", "red~none"],
        "query_image": pa.array([red, blue, red], IMAGE_REF),
        "target_image": pa.array([blue, red, None], IMAGE_REF),
    })
    llm = cpu_engine(model="tiny:qwen2_vl", max_model_len=1024, max_new_tokens=8)
    cfg = to_dict(DescribeConfig(mode="vlm", vlm=llm))
    sources = load_sources(default_prompts_dir(), PROMPTS)
    ray.init(address="local", num_cpus=8, include_dashboard=False, object_store_memory=256 * 1024 * 1024)
    try:
        ds = ray.data.from_arrow(prompt_batch(table, sources, cfg, uri))
        out = generate_text_with_images(ds, llm, str(model), Resources(batch_size=4), "describe", 2)
        rows = out.take_all()
    finally:
        ray.shutdown()
    parsed = parse_batch(pa.Table.from_pylist(rows), cfg)
    yield {r["id"]: r for r in parsed.to_pylist()}


def test_two_image_prompts_reach_the_engine_and_come_back_with_text(described):
    # A random model writes no template: off-template, cut off or empty, but never an engine failure.
    assert {k: (r[REASON] in ("filter:off_template", "error:truncated_output", "filter:empty_description"))
            for k, r in described.items() if k != "red~none"} == {"red~blue": True, "blue~red": True}


def test_a_row_without_a_target_image_keeps_its_own_reason(described):
    assert (described["red~none"][REASON], described["red~none"]["describe_raw"]) == ("error:no_target_image", "")
