"""pipeline/stages/doc2query.py: output schema, prompt building, output parsing, and the N-slot fan-out.

The snapshot of the rendered messages for tests/fixtures/doc.json is tests/unit/snapshots/
doc2query_messages.txt (STYLE R12); after an intended prompt change, regenerate it with
`FUSEGEN_UPDATE_SNAPSHOTS=1 pytest tests/unit/stages/test_doc2query.py` and review the diff.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline.config import to_dict
from pipeline.prompts import default_prompts_dir, load_sources
from pipeline.stage import REASON, SLOT, STATUS
from pipeline.stages.doc2query import (
    PROMPTS,
    Doc2Query,
    Doc2QueryConfig,
    build_messages,
    explode_batch,
    output_schema,
    parse_pairs,
)
from tests.support.snapshots import assert_prompt_snapshot

PASSAGE = (
    "The Golden Gate Bridge is a suspension bridge spanning the Golden Gate strait. "
    "It opened in 1937 and its colour is International Orange."
)


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return load_sources(default_prompts_dir(), PROMPTS)


def completion(*pairs: tuple) -> str:
    return json.dumps({"pairs": [{"query": q, "answer": a} for q, a in pairs]})


def reasons(slots) -> list[str]:
    return [reason for _, reason, _, _ in slots]


# --- output schema ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 5])
def test_output_schema_asks_for_exactly_n_pairs(n):
    pairs = output_schema(Doc2QueryConfig(queries_per_passage=n))["properties"]["pairs"]
    assert (pairs["minItems"], pairs["maxItems"]) == (n, n)


def test_output_schema_caps_query_and_answer_length():
    props = output_schema(Doc2QueryConfig(max_query_chars=50, max_answer_chars=20))["properties"]["pairs"][
        "items"
    ]["properties"]
    assert (props["query"]["maxLength"], props["answer"]["maxLength"]) == (50, 20)


def test_config_rejects_zero_queries_per_passage():
    from pipeline.errors import PipelineConfigError

    with pytest.raises(PipelineConfigError, match="queries_per_passage"):
        Doc2QueryConfig(queries_per_passage=0)


# --- parse_pairs ------------------------------------------------------------------------------------------


def test_parse_pairs_accepts_good_json():
    raw = completion(
        ("When did the bridge open?", "In 1937."), ("What colour is the bridge?", "International Orange.")
    )
    assert parse_pairs(raw, "", 2, PASSAGE) == [
        ("ok", "", "When did the bridge open?", "In 1937."),
        ("ok", "", "What colour is the bridge?", "International Orange."),
    ]


def test_parse_pairs_accepts_raw_control_characters_inside_strings():
    raw = '{"pairs": [{"query": "When did\tthe bridge\nopen?", "answer": "1937"}]}'
    assert parse_pairs(raw, "", 1, PASSAGE) == [("ok", "", "When did the bridge open?", "1937")]


@pytest.mark.parametrize(
    "raw",
    ['{"pairs": [{"query": "cut off', "", "not json at all", None],
    ids=["truncated", "empty", "prose", "none"],
)
def test_parse_pairs_rejects_invalid_json_in_every_slot(raw):
    assert parse_pairs(raw, "", 3, PASSAGE) == [("rejected", "error:invalid_json", "", "")] * 3


@pytest.mark.parametrize(
    "raw",
    ['["a", "b"]', '{"questions": []}', '{"pairs": "When?"}', "null"],
    ids=["array", "wrong-key", "pairs-not-a-list", "null"],
)
def test_parse_pairs_rejects_wrong_shape_as_schema_error(raw):
    assert reasons(parse_pairs(raw, "", 2, PASSAGE)) == ["error:schema", "error:schema"]


def test_parse_pairs_rejects_a_pair_without_a_string_query():
    raw = json.dumps({"pairs": [{"query": 5, "answer": "x"}, {"query": "Why orange?", "answer": "Fog."}]})
    assert reasons(parse_pairs(raw, "", 2, PASSAGE)) == ["error:schema", ""]


def test_parse_pairs_marks_missing_slots_when_fewer_pairs_come_back():
    assert reasons(parse_pairs(completion(("When did it open?", "1937")), "", 3, PASSAGE)) == [
        "",
        "error:missing_pair",
        "error:missing_pair",
    ]


def test_parse_pairs_ignores_pairs_beyond_n():
    raw = completion(("Q1?", "a"), ("Q2?", "b"), ("Q3?", "c"))
    assert [q for _, _, q, _ in parse_pairs(raw, "", 2, PASSAGE)] == ["Q1?", "Q2?"]


def test_parse_pairs_filters_a_repeated_query_ignoring_case_and_final_punctuation():
    raw = completion(("When did it open?", "1937"), ("when did it open", "In 1937"))
    assert reasons(parse_pairs(raw, "", 2, PASSAGE)) == ["", "filter:duplicate_query"]


@pytest.mark.parametrize("query", ["", "   ", "?", "\n\t"])
def test_parse_pairs_filters_an_empty_query(query):
    assert reasons(parse_pairs(completion((query, "x")), "", 1, PASSAGE)) == ["filter:empty_query"]


def test_parse_pairs_filters_a_query_that_is_the_passage():
    assert reasons(parse_pairs(completion((PASSAGE.upper(), "x")), "", 1, PASSAGE)) == [
        "filter:query_copies_passage"
    ]


def test_parse_pairs_filters_a_long_query_copied_from_the_passage():
    copied = "is a suspension bridge spanning the Golden Gate strait"
    assert reasons(parse_pairs(completion((copied, "x")), "", 1, PASSAGE)) == ["filter:query_copies_passage"]


def test_parse_pairs_keeps_a_short_query_that_appears_in_the_passage():
    assert reasons(parse_pairs(completion(("Golden Gate Bridge", "x")), "", 1, PASSAGE)) == [""]


def test_parse_pairs_passes_the_llm_error_to_every_slot():
    assert (
        parse_pairs('{"pairs": []}', "error:prompt_too_long", 2, PASSAGE)
        == [("rejected", "error:prompt_too_long", "", "")] * 2
    )


@pytest.mark.parametrize(
    "pair", [{"query": "When?", "answer": " "}, {"query": "When?"}, {"query": "When?", "answer": 1937}]
)
def test_parse_pairs_does_not_keep_a_pair_without_an_answer(pair):
    assert parse_pairs(json.dumps({"pairs": [pair]}), "", 1, PASSAGE)[0][0] != "ok"


# --- build_messages -------------------------------------------------------------------------------------


@pytest.mark.parametrize("few_shot", [0, 1, 2])
def test_build_messages_has_system_then_few_shot_pairs_then_user(sources, few_shot):
    messages = build_messages(sources, Doc2QueryConfig(few_shot=few_shot), "Title", PASSAGE)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * few_shot + ["user"]


def test_build_messages_cuts_the_passage_to_passage_max_chars(sources):
    text = "A" * 150 + "B" * 100
    last = build_messages(sources, Doc2QueryConfig(passage_max_chars=150), None, text)[-1]["content"]
    assert ("A" * 150 in last, "B" in last) == (True, False)


def test_build_messages_asks_for_n_pairs(sources):
    messages = build_messages(sources, Doc2QueryConfig(queries_per_passage=4, few_shot=0), "T", PASSAGE)
    assert (
        "exactly 4 pairs" in messages[0]["content"]
        and "Write 4 question-answer pairs" in messages[-1]["content"]
    )


def test_build_messages_leaves_out_the_title_line_when_there_is_no_title(sources):
    assert "Title:" not in build_messages(sources, Doc2QueryConfig(few_shot=0), None, PASSAGE)[-1]["content"]


def test_build_messages_few_shot_answers_are_json_with_n_pairs(sources):
    messages = build_messages(sources, Doc2QueryConfig(queries_per_passage=2, few_shot=1), "T", PASSAGE)
    assert len(json.loads(messages[2]["content"])["pairs"]) == 2


def test_rendered_messages_for_fixture_doc_match_snapshot():
    assert_prompt_snapshot(Doc2Query, Doc2QueryConfig(), "doc.json", "doc2query_messages.txt")


# --- explode_batch -----------------------------------------------------------------------------------------


@pytest.fixture
def generated() -> pa.Table:
    """Two passage rows as they leave the LLM step: one good completion, one LLM error."""
    return pa.table(
        {
            "id": ["gg", "ek"],
            "doc_id": ["gg", "ek"],
            "text": [PASSAGE, "Everest is the highest mountain."],
            "title": ["Golden Gate Bridge", None],
            "_shard": ["000003", "000003"],
            "_src": pa.array([0, 1], pa.int64()),
            "_messages": ["[]", "[]"],
            "_copy_keys": ["[]", "[]"],
            "_raw": [
                completion(
                    ("When did it open?", "1937"), ("when did it open", "1937"), ("Colour?", "Orange")
                ),
                "",
            ],
            "_llm_error": ["", "error:truncated_output"],
        }
    )


def explode(table: pa.Table, n: int = 3) -> list[dict]:
    return explode_batch(table, to_dict(Doc2QueryConfig(queries_per_passage=n))).to_pylist()


def test_explode_batch_makes_n_rows_per_passage(generated):
    assert len(explode(generated, 3)) == 6


def test_explode_batch_ids_are_doc_id_dash_q_slot(generated):
    assert [r["id"] for r in explode(generated)] == ["gg-q0", "gg-q1", "gg-q2", "ek-q0", "ek-q1", "ek-q2"]


def test_explode_batch_numbers_slots_in_slot_and_query_index(generated):
    rows = explode(generated)
    assert [r[SLOT] for r in rows] == [r["query_index"] for r in rows] == [0, 1, 2, 0, 1, 2]


def test_explode_batch_sets_status_and_reason_per_slot(generated):
    assert [(r[STATUS], r[REASON]) for r in explode(generated)] == [
        ("ok", ""),
        ("filtered", "filter:duplicate_query"),
        ("ok", ""),
        ("rejected", "error:truncated_output"),
        ("rejected", "error:truncated_output"),
        ("rejected", "error:truncated_output"),
    ]


def test_explode_batch_keeps_input_columns_and_shard_tags(generated):
    rows = explode(generated)
    assert [(r["doc_id"], r["title"], r["_shard"], r["_src"]) for r in rows[::3]] == [
        ("gg", "Golden Gate Bridge", "000003", 0),
        ("ek", None, "000003", 1),
    ]


def test_explode_batch_drops_llm_helper_columns_and_keeps_raw_as_llm_raw(generated):
    table = explode_batch(generated, to_dict(Doc2QueryConfig(queries_per_passage=3)))
    assert (
        {"_messages", "_raw", "_llm_error"} & set(table.column_names),
        table["llm_raw"].to_pylist()[0] == generated["_raw"][0].as_py(),
    ) == (set(), True)


def test_explode_batch_column_types(generated):
    schema = explode_batch(generated, to_dict(Doc2QueryConfig(queries_per_passage=3))).schema
    assert (schema.field("query_index").type, schema.field(SLOT).type, schema.field("query").type) == (
        pa.int32(),
        pa.int32(),
        pa.string(),
    )


# --- resume -------------------------------------------------------------------------------------------------


# --- copied few-shot examples --------------------------------------------------------------------------


def test_foreign_keys_hold_the_examples_about_things_the_passage_never_names():
    from pipeline.stages.doc2query import foreign_keys, shown_examples

    sources = load_sources(default_prompts_dir(), PROMPTS)
    cfg = Doc2QueryConfig(few_shot=2)
    shown = shown_examples(sources, cfg)
    about_gg = foreign_keys(shown, "Golden Gate Bridge", PASSAGE)
    elsewhere = foreign_keys(shown, "长城", "长城是中国古代的军事防御工程。")
    assert "when did the golden gate bridge open" in elsewhere
    assert "when did the golden gate bridge open" not in about_gg
    assert set(about_gg) < set(elsewhere)


def test_parse_pairs_filters_a_query_copied_from_a_foreign_example():
    keys = frozenset({"when did the golden gate bridge open", "in 1937"})
    out = parse_pairs(completion(("When did the Golden Gate Bridge open?", "In 1937.")), "", 1, "长城很长。", keys)
    assert reasons(out) == ["filter:copied_example"]


def test_parse_pairs_filters_an_example_answer_the_passage_does_not_contain():
    keys = frozenset({"in 1937"})
    out = parse_pairs(completion(("How old is the wall?", "In 1937.")), "", 1, "The wall is very old.", keys)
    assert reasons(out) == ["filter:copied_example"]


def test_parse_pairs_keeps_an_example_answer_the_passage_contains():
    keys = frozenset({"in 1937"})
    out = parse_pairs(completion(("When was it finished?", "In 1937.")), "", 1, "It was finished in 1937.", keys)
    assert reasons(out) == [""]


def test_query_types_are_asked_for_in_the_schema_and_shown_in_the_examples():
    typed = Doc2QueryConfig(queries_per_passage=2, query_types=("what", "when", "why", "how much", "where"))
    item = output_schema(typed)["properties"]["pairs"]["items"]
    assert (item["required"][0], item["properties"]["type"]["enum"]) == ("type", list(typed.query_types))
    sources = load_sources(default_prompts_dir(), PROMPTS)
    shown = json.loads(build_messages(sources, typed, "T", "A passage. " * 20)[2]["content"])
    assert [p["type"] for p in shown["pairs"]] == ["when", "how much"]
    untyped = json.loads(build_messages(sources, Doc2QueryConfig(queries_per_passage=2), "T", "x " * 60)[2]["content"])
    assert all("type" not in p for p in untyped["pairs"])
    assert "different type" in build_messages(sources, typed, "T", "x " * 60)[0]["content"]


def test_query_types_must_be_distinct():
    from pipeline.errors import PipelineConfigError

    with pytest.raises(PipelineConfigError, match="query_types"):
        Doc2QueryConfig(query_types=("what", "what"))
