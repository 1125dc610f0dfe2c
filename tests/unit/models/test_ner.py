"""pipeline/models/ner.py: candidates from the real spaCy English pipeline, and the rule fallback."""

from __future__ import annotations

import pytest

from pipeline.errors import PipelineConfigError
from pipeline.models.ner import RULES_IDENTITY, NERConfig, candidates, load_ner, ner_identity, rule_entities
from pipeline.text.leak import fold


def test_real_english_model_proposes_the_query_entity_first():
    ner = load_ner(NERConfig())
    got = candidates(ner, "When was the Eiffel Tower in Paris completed?",
                     "The Eiffel Tower is a wrought-iron tower in Paris, designed by Gustave Eiffel.", fold, 8)
    assert "Eiffel Tower" in got[0] and "Paris" in got and "Gustave Eiffel" in got


def test_candidates_are_deduplicated_and_capped():
    ner = load_ner(NERConfig())
    got = candidates(ner, "Did Paris host Paris events?", "Paris, Lyon, Nice, Lille, Marseille and Paris.", fold, 3)
    assert len(got) == 3 and len({fold(c) for c in got}) == 3


def test_non_english_text_does_not_fail_with_the_english_model():
    ner = load_ner(NERConfig())
    assert isinstance(candidates(ner, "长城有多长？", "长城是中国古代的军事防御工程。", fold, 8), list)
    assert isinstance(candidates(ner, "Wann wurde der Kölner Dom vollendet?", "Der Kölner Dom steht in Köln.", fold, 8), list)


def test_missing_model_falls_back_to_rules_with_a_warning(caplog):
    cfg = NERConfig(model="no_such_spacy_model")
    assert ner_identity(cfg) == RULES_IDENTITY
    ner = load_ner(cfg)
    assert ner.nlp is None
    assert "长城" in " ".join(ner.entities("长城有多长？"))


def test_missing_model_with_fallback_error_is_a_config_error():
    with pytest.raises(PipelineConfigError, match="ner.model"):
        ner_identity(NERConfig(model="no_such_spacy_model", fallback="error"))


def test_rules_find_capitalised_runs_and_quotes():
    found = rule_entities('When did Antonín Dvořák write the "New World" symphony?')
    assert "Antonín Dvořák" in found and "New World" in found


def test_rules_skip_question_words_at_the_start():
    assert rule_entities("When was it built?") == []
