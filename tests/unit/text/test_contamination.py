"""pipeline/text/contamination.py: words, n-gram overlap and the evaluation file readers."""

from __future__ import annotations

import json

import pytest

from pipeline.text.contamination import EvalNgrams, read_eval_texts, words

PASSAGE = "the quick brown fox jumps over the lazy dog near the river bank at dawn"


def test_words_fold_case_accents_and_drop_image_tokens():
    assert words("<|image_1|>\nÉcole <image>Normale") == ["ecole", "normale"]


def test_each_cjk_character_is_a_word():
    assert words("长城 is long") == ["长", "城", "is", "long"]


def test_a_text_sharing_every_ngram_with_the_eval_set_overlaps_fully():
    assert EvalNgrams.build([PASSAGE], n=5, threshold=0.5).overlap(PASSAGE.upper()) == 1.0


@pytest.mark.parametrize(("kept_words", "contaminated"), [(9, True), (7, False)])
def test_the_threshold_is_the_share_of_the_texts_ngrams_found(kept_words, contaminated):
    # 14 words -> 10 five-grams; the first `kept_words` words shared with the eval text.
    text = " ".join(PASSAGE.split()[:kept_words] + [f"w{i}" for i in range(14 - kept_words)])
    assert EvalNgrams.build([PASSAGE], n=5, threshold=0.5).contaminated(text) is contaminated


def test_a_short_text_matches_only_an_equal_eval_text():
    evals = EvalNgrams.build(["Who designed this bridge?", PASSAGE], n=13, threshold=0.5)
    assert (evals.contaminated("who designed this BRIDGE"), evals.contaminated("who designed this")) == (True, False)


def test_an_empty_text_is_never_contaminated():
    assert EvalNgrams.build([PASSAGE], n=3, threshold=0.1).contaminated("") is False


def test_mmeb_eval_records_give_query_and_target_list_texts(tmp_path):
    path = tmp_path / "mmeb.jsonl"
    path.write_text(json.dumps({"qry_text": "<|image_1|> q", "tgt_text": ["a", "b"], "qry_img_path": "x.jpg"}) + "\n")
    assert read_eval_texts(str(path)) == ["<|image_1|> q", "a", "b"]


def test_a_json_array_file_is_read_as_records(tmp_path):
    path = tmp_path / "evals.json"
    path.write_text(json.dumps([{"txt": "one"}, {"query_txt": "two"}]))
    assert read_eval_texts(str(path)) == ["one", "two"]
