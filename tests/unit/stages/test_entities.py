"""pipeline/stages/entities.py: parsing and checking the LLM's answer, prompts, the batch steps.

The snapshot of the rendered messages for tests/fixtures/query.json is tests/unit/snapshots/
entities_messages.txt (STYLE R12); regenerate with `FUSEGEN_UPDATE_SNAPSHOTS=1` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import PipelineConfigError
from pipeline.models.llm import LLM_ERROR, MESSAGES, RAW
from pipeline.prompts import default_prompts_dir, load_examples, load_sources
from pipeline.stage import REASON, SHARD, SRC, STATUS
from pipeline.stages.entities import (
    PROMPTS,
    Entities,
    EntitiesConfig,
    build_messages,
    output_schema,
    parse_batch,
    parse_entity,
    prompt_batch,
)
from pipeline.text.leak import leak_reason

SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "entities_messages.txt"
QUERY = "When did the Golden Gate Bridge open?"


def answer(entity="Golden Gate Bridge", etype="landmark", aliases=(), query="When did this landmark open?") -> str:
    return json.dumps({"entity": entity, "entity_type": etype, "aliases": list(aliases), "query": query})


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return load_sources(default_prompts_dir(), PROMPTS)


# --- parse_entity ------------------------------------------------------------------------------------


def test_good_answer_is_kept_with_every_field():
    assert parse_entity(answer(aliases=["GGB"]), "", QUERY) == (
        "ok", "", "Golden Gate Bridge", "landmark", ["GGB"], "When did this landmark open?",
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "error:invalid_json"),
        ("[]", "error:schema"),
        (json.dumps({"entity": "X", "entity_type": "t", "query": "q"}), "ok-or-filter"),  # aliases optional
        (json.dumps({"entity": 3, "entity_type": "t", "aliases": [], "query": "q"}), "error:schema"),
        (json.dumps({"entity": "X", "entity_type": "t", "aliases": "X", "query": "q"}), "error:schema"),
        (json.dumps({"entity": "X", "entity_type": "t", "aliases": [1], "query": "q"}), "error:schema"),
        (answer(entity="  "), "filter:no_entity"),
        (answer(entity="Eiffel Tower"), "filter:entity_not_in_query"),
        (answer(query=" "), "filter:empty_rewrite"),
        (answer(query="When did the golden gate bridge open"), "filter:rewrite_unchanged"),
        (answer(query="When did this Golden Gate landmark open?"), "filter:entity_leak"),
        (answer(aliases=["GGB"], query="When did this landmark (the GGB) open?"), "filter:alias_leak"),
    ],
)
def test_bad_answers_get_their_reason(raw, reason):
    got = parse_entity(raw, "", QUERY)[1]
    if reason == "ok-or-filter":
        assert not got.startswith("error:")
    else:
        assert got == reason


def test_llm_error_passes_through_as_a_reject():
    assert parse_entity("", "error:timeout", QUERY)[:2] == ("rejected", "error:timeout")


def test_entity_is_matched_in_the_query_case_and_accent_insensitively():
    raw = answer(entity="Sagrada Familia", etype="basilica", query="Who designed this basilica?")
    assert parse_entity(raw, "", "Who designed the Sagrada Família?")[:2] == ("ok", "")


def test_cjk_entity_and_rewrite():
    raw = json.dumps({"entity": "长城", "entity_type": "建筑", "aliases": ["万里长城"], "query": "这座建筑有多长？"})
    assert parse_entity(raw, "", "长城有多长？")[:2] == ("ok", "")


def test_german_query_rewrite():
    raw = json.dumps({"entity": "Kölner Dom", "entity_type": "Kathedrale", "aliases": [], "query": "Wann wurde diese Kathedrale vollendet?"})
    assert parse_entity(raw, "", "Wann wurde der Kölner Dom vollendet?")[:2] == ("ok", "")


def test_control_characters_inside_strings_are_tolerated():
    raw = '{"entity": "Golden Gate Bridge", "entity_type": "landmark", "aliases": [], "query": "When did\tthis landmark open?"}'
    assert parse_entity(raw, "", QUERY)[5] == "When did this landmark open?"


# --- config, schema, prompts ---------------------------------------------------------------------------


def test_schema_bounds_every_string():
    schema = output_schema(EntitiesConfig(max_rewrite_chars=50))
    props = schema["properties"]
    assert props["query"]["maxLength"] == 50 and props["aliases"]["items"]["maxLength"] and props["entity"]["maxLength"]


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
    for ex in load_examples(sources[PROMPTS[2]], PROMPTS[2]):
        a = ex["answer"]
        assert parse_entity(json.dumps(a, ensure_ascii=False), "", ex["query"])[:2] == ("ok", ""), ex["title"]
        assert leak_reason(a["entity"], a["aliases"], a["query"]) == ""


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


def render_snapshot(repo_root: Path) -> str:
    row = json.loads((repo_root / "tests" / "fixtures" / "query.json").read_text(encoding="utf-8"))
    messages = Entities.render_row(default_prompts_dir(), EntitiesConfig(), row)
    return "".join(f"--- {m['role']}\n{m['content']}\n" for m in messages)


def test_rendered_messages_for_fixture_query_match_snapshot(repo_root):
    rendered = render_snapshot(repo_root)
    if os.environ.get("FUSEGEN_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(rendered, encoding="utf-8")
    assert rendered == SNAPSHOT.read_text(encoding="utf-8")


# --- the batch steps, without Ray ------------------------------------------------------------------------


@pytest.fixture
def rows() -> pa.Table:
    return pa.table({
        "id": ["gg-q0", "cn-q0", "de-q0"],
        "doc_id": ["gg", "cn", "de"],
        "title": ["Golden Gate Bridge", "长城", None],
        "text": ["The Golden Gate Bridge opened in 1937 in San Francisco.", "长城是中国古代的军事防御工程。",
                 "Der Kölner Dom steht in Köln."],
        "query": [QUERY, "长城有多长？", "Wann wurde der Kölner Dom vollendet?"],
        SHARD: ["000000"] * 3,
        SRC: pa.array([0, 1, 2], pa.int64()),
    })


def test_prompt_batch_adds_candidates_and_messages(rows, sources):
    out = prompt_batch(rows, sources, json.loads(json.dumps(_cfg())))
    assert "Golden Gate Bridge" in " ".join(out["_ner"].to_pylist()[0])
    assert all(json.loads(m)[-1]["role"] == "user" for m in out[MESSAGES].to_pylist())


def test_parse_batch_sets_columns_and_statuses(rows, sources):
    table = prompt_batch(rows, sources, _cfg())
    raws = [answer(), "{broken", json.dumps({"entity": "Kölner Dom", "entity_type": "Kirche", "aliases": [],
                                             "query": "Wann wurde diese Kirche vollendet?"})]
    table = table.append_column(RAW, pa.array(raws)).append_column(LLM_ERROR, pa.array(["", "", ""]))
    out = parse_batch(table, _cfg())
    assert out[STATUS].to_pylist() == ["ok", "rejected", "ok"]
    assert out[REASON].to_pylist() == ["", "error:invalid_json", ""]
    assert out["rewritten_query"].to_pylist() == ["When did this landmark open?", None, "Wann wurde diese Kirche vollendet?"]
    assert out["entities_raw"].to_pylist()[1] == "{broken"  # rejects keep the raw text
    assert {"ner_candidates", "entity", "entity_type", "entity_aliases", "id", "doc_id", SHARD} <= set(out.column_names)
    assert MESSAGES not in out.column_names and LLM_ERROR not in out.column_names


def _cfg() -> dict:
    from pipeline.config import to_dict

    return to_dict(EntitiesConfig())
