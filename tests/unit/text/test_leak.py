"""pipeline/text/leak.py: does a rewritten query still name its entity? (English, accents, CJK)."""

from __future__ import annotations

import pytest

from pipeline.text.leak import contains, fold, leak_reason


@pytest.mark.parametrize(
    ("entity", "aliases", "rewritten", "reason"),
    [
        ("Eiffel Tower", [], "When was this tower completed?", "filter:entity_leak"),  # token "tower"
        ("Eiffel Tower", [], "When was this landmark completed?", ""),
        ("Eiffel Tower", [], "When was the EIFFEL TOWER completed?", "filter:entity_leak"),
        ("Sagrada Família", [], "Who designed the Sagrada basilica?", "filter:entity_leak"),
        ("Sagrada Família", [], "Who designed the sagrada familia?", "filter:entity_leak"),  # accents folded
        ("Gaudí", [], "What did Gaudi's pupils build?", "filter:entity_leak"),  # possessive, no accent
        ("Bank of England", [], "When was this institution of the nation founded?", ""),  # "of": too short
        ("Bank of England", [], "When was this bank founded?", "filter:entity_leak"),  # "bank": 4 chars
        ("Zürich", [], "How many people live in zurich?", "filter:entity_leak"),
        ("Fernão de Magalhães", [], "Where did this explorer die?", ""),
        ("Fernão de Magalhães", [], "Where did Fernao die?", "filter:entity_leak"),
        ("Kölner Dom", ["Cologne Cathedral"], "Wann wurde diese Kathedrale vollendet?", ""),
        ("Kölner Dom", ["Cologne Cathedral"], "When was Cologne Cathedral finished?", "filter:alias_leak"),
        ("Golden Gate Bridge", ["GGB"], "When did the GGB open?", "filter:alias_leak"),
        ("Eiffel Tower", ["L"], "Where is L'Oréal's office?", ""),  # one-character aliases are ignored
        ("Tower", [], "Where is Towerhill?", ""),  # Latin script: whole words only
    ],
)
def test_leak_reason_latin(entity, aliases, rewritten, reason):
    assert leak_reason(entity, aliases, rewritten) == reason


@pytest.mark.parametrize(
    ("entity", "rewritten", "reason"),
    [
        ("故宫博物院", "这个地方在哪里？", ""),
        # Strict on purpose: any 2 characters of the name count, even a shared suffix (博物); a lost
        # sample costs less than a query that gives its image away.
        ("故宫博物院", "这个博物馆在哪里？", "filter:entity_leak"),
        ("故宫博物院", "故宫博物院在哪里？", "filter:entity_leak"),
        ("故宫博物院", "这个地方的故宫在哪里？", "filter:entity_leak"),  # a 2-character run of the entity
        ("长城", "这座建筑有多长？", ""),
        ("長城", "長城有多長？", "filter:entity_leak"),
        ("東京タワー", "このタワーは何メートルですか", "filter:entity_leak"),
    ],
)
def test_leak_reason_cjk_is_character_level(entity, rewritten, reason):
    assert leak_reason(entity, [], rewritten) == reason


def test_alias_in_cjk_is_found_inside_a_sentence():
    assert leak_reason("长城", ["万里长城"], "万里长城有多长？") == "filter:entity_leak"


def test_min_token_chars_is_configurable():
    assert leak_reason("Big Ben", [], "When was Big's clock installed?", min_token_chars=3) == "filter:entity_leak"
    assert leak_reason("Big Ben", [], "When was Big's clock installed?", min_token_chars=4) == ""


def test_fold_strips_accents_case_and_apostrophes():
    assert fold("Gaudí’s  Casa-Batlló") == "gaudi s casa batllo"


def test_contains_matches_words_not_substrings():
    assert contains("The Eiffel Tower's shadow", "eiffel tower") and not contains("Eiffelturm", "Eiffel")
