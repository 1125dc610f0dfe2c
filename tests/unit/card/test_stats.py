"""pipeline/card/stats.py: language detection and the counts the card shows."""

from __future__ import annotations

from collections import Counter

from pipeline.card.stats import card_languages, detect_language


def test_real_sentences_get_their_language_and_model_noise_gets_und():
    texts = [
        "When was this tower built?",
        "Wann wurde dieser Turm gebaut?",
        "这座塔是什么时候建造的",
        "}idgeidgeidgeidgeidgeidgeidgeidgeidgeϸϸϸ",
    ]
    assert [detect_language(t) for t in texts] == ["en", "de", "zh", "und"]


def test_metadata_languages_leave_out_und_and_rare_detections():
    counts = Counter({"en": 60, "und": 30, "de": 8, "cy": 2})
    assert card_languages(counts, 100) == ["de", "en"]
