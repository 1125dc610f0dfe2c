"""The dataset card (and push) of a MegaPairs run: the funnel of its sections, the MegaPairs section with
its example thumbnails, GME-only sections that say they do not apply, model ids from the manifests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.card import CardConfig, build_card
from pipeline.publish import PushConfig, push_run
from tests.support.megapairs_run import make_megapairs_run


@pytest.fixture(scope="module")
def mp_card(tmp_path_factory) -> tuple[Path, str]:
    run = make_megapairs_run(tmp_path_factory.mktemp("mp"), rows=8, validation_ratio=0.4)
    return run, Path(build_card(str(run), CardConfig(examples=3))).read_text()


def section(card: str, title: str) -> str:
    return re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", card, re.DOTALL | re.MULTILINE).group(1)


def test_the_funnel_lists_every_megapairs_section_with_its_reasons(mp_card):
    funnel = section(mp_card[1], "Pipeline funnel")
    stages = re.findall(r"^\| (\w+) \| \d+", funnel, re.MULTILINE)
    assert stages == ["pool", "mine_pairs", "describe", "instruct", "export"]
    assert "filter:no_pair_in_band (1)" in funnel and "filter:duplicate_image (1)" in funnel


def test_the_megapairs_section_counts_pairs_views_and_instructions(mp_card):
    text = section(mp_card[1], "MegaPairs triplets")
    assert text.strip().startswith("8 (query image, target image) pairs over 8 query images")
    assert "| clip_image | 8 | 100.0% |" in text and "| text | 4 | 50.0% |" in text
    assert "| 3 | 8 |" in text  # 3 instructions on each of the 8 pairs
    assert "`cc-by-4.0` (8), `cc0-1.0` (8)" in text


def test_example_rows_show_query_target_and_negative_thumbnails_that_exist(mp_card):
    run, card = mp_card
    rows = [r for r in section(card, "Example rows").splitlines() if r.startswith("| `")]
    assert len(rows) == 3
    for row in rows:
        srcs = re.findall(r'src="([^"]+)"', row)
        assert [s.rsplit("_", 1)[-1] for s in srcs] == ["query.jpg", "target.jpg", "negative.jpg"]
        assert all((run / "export" / s).stat().st_size > 0 for s in srcs)
        assert "(+2 more)" in row


def test_gme_only_sections_say_they_do_not_apply(mp_card):
    card = mp_card[1]
    assert "do not apply to MegaPairs triplets" in section(card, "Tasks and modalities")
    assert "does not apply to MegaPairs triplets" in section(card, "Image provenance")
    assert "do not apply to MegaPairs triplets" in section(card, "Scores")
    assert "--format megapairs" in section(card, "Fine-tuning with ms-swift")
    assert "passages" not in section(card, "Licenses and obligations")


def test_models_come_from_the_manifests(mp_card):
    models = section(mp_card[1], "Models")
    assert "| describe | vlm | `Qwen/Qwen2-VL-7B-Instruct` | a28a094 |" in models
    assert "| instruct | llm |" in models and "| mine_pairs | view:text |" in models


def test_the_metadata_names_both_splits_and_the_track(mp_card):
    meta = yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", mp_card[1], re.DOTALL).group(1))
    assert [f["split"] for f in meta["configs"][0]["data_files"]] == ["train", "validation"]
    assert {"megapairs", "hard-negatives", "image-retrieval"} <= set(meta["tags"])
    assert "fused-modal" not in meta["tags"]


def test_push_uploads_a_megapairs_run(tmp_path, hub):
    run = make_megapairs_run(tmp_path, rows=4, validation_ratio=0.0)
    push_run(str(run), PushConfig(repo="me/mp", endpoint=hub.endpoint))
    files = hub.files("me/mp")
    assert "README.md" in files and any(p.startswith("data/train-") for p in files)
    assert b"## MegaPairs triplets" in files["README.md"]


def test_the_ms_swift_command_comes_with_root_image_dir_and_qwen_vl_utils(mp_card):
    text = section(mp_card[1], "Fine-tuning with ms-swift")
    assert "ROOT_IMAGE_DIR=swift_data swift sft" in text and "pip install ms-swift qwen-vl-utils" in text
    assert "never from the\nJSONL's folder" in text
