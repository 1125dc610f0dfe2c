"""pipeline/tracks.py + settings: a track names its sections; one stage class may serve two of them."""

from __future__ import annotations

import pytest
import yaml

from pipeline.errors import PipelineConfigError
from pipeline.settings import build_stages, load_config
from pipeline.tracks import TRACKS, register_track, sections
from tests.support.tracks import TRACK, Tag, TagConfig


def write(path, text: str):
    path.write_text(text)
    return path


@pytest.fixture
def two_tags(tmp_path):
    return write(
        tmp_path / "t.yaml",
        f"pipeline: {TRACK}\ntag_a: {{column: a, value: one}}\ntag_b: {{column: b, fanout: 2}}\n"
        "export: {schema: passthrough}\n",
    )


def test_gme_track_lists_its_sections_in_order():
    assert list(sections("gme")) == [
        "ingest", "doc2query", "consistency", "entities", "images", "clip_filter", "gme_score", "negatives", "export",
    ]


def test_one_stage_class_under_two_sections_gets_two_configs(two_tags):
    config = load_config(two_tags)
    assert (config.tag_a, config.tag_b) == (TagConfig(column="a", value="one"), TagConfig(column="b", fanout=2))


def test_stages_of_a_two_section_track_are_named_by_their_section(two_tags):
    stages = build_stages(load_config(two_tags), None)
    assert [(s.name, type(s)) for s in stages[1:3]] == [("tag_a", Tag), ("tag_b", Tag)]
    assert stages[1].config != stages[2].config


def test_default_stage_list_is_the_whole_track(two_tags):
    assert load_config(two_tags).stages == ("ingest", "tag_a", "tag_b", "export")


def test_a_section_of_another_track_is_an_unknown_key(tmp_path):
    path = write(tmp_path / "t.yaml", f"pipeline: {TRACK}\ndoc2query: {{few_shot: 1}}\n")
    with pytest.raises(PipelineConfigError, match="`doc2query` is not a known key of pipeline"):
        load_config(path)


def test_an_unknown_track_is_a_config_error_naming_the_tracks(tmp_path):
    with pytest.raises(PipelineConfigError, match="must be one of gme"):
        load_config(write(tmp_path / "t.yaml", "pipeline: nosuch\n"))


def test_resolved_config_writes_each_section_at_the_top_level(two_tags):
    values = load_config(two_tags).as_dict()
    assert values["pipeline"] == TRACK and values["tag_b"]["fanout"] == 2 and "sections" not in values
    assert yaml.safe_load(yaml.safe_dump(values))["tag_a"]["column"] == "a"


def test_a_track_whose_sections_repeat_is_refused():
    with pytest.raises(ValueError, match="repeat"):
        register_track("bad", (("ingest", Tag), ("ingest", Tag)))
    assert "bad" not in TRACKS
