"""pipeline/text/mask.py: rule-based "this <type>" masking of an entity in an English question."""

from __future__ import annotations

import pytest

from pipeline.text.mask import looks_english, mask_entity, type_phrase


@pytest.mark.parametrize(
    ("query", "entity", "etype", "masked"),
    [
        ("When did the Golden Gate Bridge open?", "Golden Gate Bridge", "landmark", "When did this landmark open?"),
        ("Why is the golden gate bridge red?", "Golden Gate Bridge", "Landmark", "Why is this landmark red?"),
        ("Golden Gate Bridge: when did it open?", "Golden Gate Bridge", "landmark", "This landmark: when did it open?"),
        ("What inspired Frida Kahlo's garden?", "Frida Kahlo", "painter", "What inspired this painter's garden?"),
        ("Is the Tower Bridge older than Big Ben?", "Big Ben", "great clock", "Is the Tower Bridge older than this great clock?"),
        (
            "What was the most significant discovery Marie Curie made?",
            "Marie Curie",
            "scientist",
            "What was the most significant discovery this scientist made?",
        ),
        ("Was Gaudí born before Gaudí's rival?", "Gaudí", "architect", "Was this architect born before this architect's rival?"),
    ],
)
def test_mask_entity_replaces_every_mention_and_its_determiner(query, entity, etype, masked):
    assert mask_entity(query, entity, etype) == masked


@pytest.mark.parametrize(
    ("query", "entity", "etype"),
    [
        ("Wann wurde der Kölner Dom vollendet?", "Kölner Dom", "cathedral"),  # not English
        ("长城有多长？", "长城", "building"),  # CJK
        ("When did the Golden Gate Bridge open?", "Golden Gate Bridge", "Song to the Moon"),  # 4 words
        ("When did the Golden Gate Bridge open?", "Golden Gate Bridge", "bridge"),  # word already there
        ("When did the Golden Gate Bridge open?", "Golden Gate Bridge", "建筑"),  # not a plain phrase
        ("When did the Golden Gate Bridge open?", "Gate Bridges", "landmark"),  # not on word boundaries
        ("When did the Golden Gate Bridge open?", "  ", "landmark"),  # no entity
        ("What is the most famous Inca temple?", "Inca", "civilisation"),  # a modifier in a noun phrase
    ],
)
def test_mask_entity_refuses_what_a_template_cannot_mask(query, entity, etype):
    assert mask_entity(query, entity, etype) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Who built it?", True), ("Wann wurde er gebaut?", False), ("Quand a-t-il été construit ?", False), ("谁建的?", False)],
)
def test_looks_english(text, expected):
    assert looks_english(text) is expected


@pytest.mark.parametrize(
    ("etype", "phrase"),
    [("Landmark", "landmark"), (" clock   tower ", "clock tower"), ("self-portrait", "self-portrait"),
     ("Song to the Moon", None), ("Symphony No. 9", None), ("", None)],
)
def test_type_phrase(etype, phrase):
    assert type_phrase(etype) == phrase
