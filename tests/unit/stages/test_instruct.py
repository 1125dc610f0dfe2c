"""pipeline/stages/instruct.py: the demonstration pool, seeded demo draws, prompt building, instruction
parsing (JSON, near-duplicates, copied demonstrations, too few) and the stage's render -> LLM -> parse
steps over a hand-built table, with a fake LLM and with the tiny random Qwen2 under the real grammar.

The snapshot of the rendered messages for tests/fixtures/pair.json is tests/unit/snapshots/
instruct_messages.txt (STYLE R12); regenerate it with `FUSEGEN_UPDATE_SNAPSHOTS=1 pytest
tests/unit/stages/test_instruct.py` after an intended prompt change and review the diff.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import yaml

from pipeline.config import to_dict
from pipeline.errors import PipelineConfigError
from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW, LLMConfig
from pipeline.prompts import default_prompts_dir, load_sources
from pipeline.stage import REASON, STATUS
from pipeline.stages.instruct import (
    DEMO_TEXT,
    PROMPTS,
    Instruct,
    InstructConfig,
    build_messages,
    draw_demos,
    load_demos,
    output_schema,
    parse_batch,
    parse_instructions,
    prompt_batch,
    same_instruction,
    words,
)
from tests.support.snapshots import assert_prompt_snapshot

CFG = InstructConfig()
DESCRIPTION = (
    "Both images show a golden retriever. However, the Source Image shows it on a sofa, whereas the Target "
    "Image shows it on a beach with a stick."
)


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return load_sources(default_prompts_dir(), PROMPTS)


@pytest.fixture(scope="module")
def pool(sources) -> list[dict]:
    return load_demos(sources, CFG.demos_per_row)


def answer(*items) -> str:
    return json.dumps({"instructions": list(items)})


# --- the demonstration pool and its draws ----------------------------------------------------------


def test_demo_pool_has_at_least_50_entries_with_unique_ids_and_three_instructions_each(repo_root):
    demos = yaml.safe_load((repo_root / "prompts" / "megapairs" / "demos.yaml").read_text(encoding="utf-8"))
    ids = [d["id"] for d in demos]
    assert (len(demos) >= 50, len(set(ids)) == len(ids), min(len(d["instructions"]) for d in demos) >= 3) == (
        True, True, True,
    )


def test_demo_descriptions_follow_the_describe_template(pool):
    from pipeline.stages.describe import parse_description

    assert [d["id"] for d in pool if parse_description(d["description"], "", True)[0] != "ok"] == []


def test_load_demos_refuses_a_pool_smaller_than_demos_per_row(sources):
    with pytest.raises(PipelineConfigError, match="demos_per_row asks for 500"):
        load_demos(sources, 500)


def test_load_demos_refuses_an_entry_with_too_few_instructions(sources):
    bad = yaml.safe_dump([{"id": "x", "description": "d", "source_caption": "s", "target_caption": "t",
                           "instructions": ["one", "two"]}])
    with pytest.raises(PipelineConfigError, match="entry 0"):
        load_demos({**sources, PROMPTS[2]: bad}, 1)


def test_demo_draws_are_reproducible_from_seed_and_row_id():
    assert [draw_demos(55, 5, 3, f"q{i}~t") for i in range(20)] == [draw_demos(55, 5, 3, f"q{i}~t") for i in range(20)]


def test_demo_draws_depend_on_the_seed_and_the_row():
    assert (draw_demos(55, 5, 0, "a~b") != draw_demos(55, 5, 1, "a~b"), draw_demos(55, 5, 0, "a~b") != draw_demos(55, 5, 0, "a~c")) == (
        True, True,
    )


def test_demo_draws_are_distinct_positions_in_the_pool():
    drawn = [draw_demos(55, 5, 0, f"row{i}") for i in range(200)]
    assert (all(len(set(d)) == 5 for d in drawn), {i for d in drawn for i in d} <= set(range(55))) == (True, True)


# --- schema and messages ------------------------------------------------------------------------------


def test_output_schema_bounds_the_list_and_each_instruction():
    items = output_schema(InstructConfig(min_instructions=3, max_instructions=4, max_instruction_chars=90))[
        "properties"]["instructions"]
    assert (items["minItems"], items["maxItems"], items["items"]["maxLength"]) == (3, 4, 90)


def test_config_rejects_max_below_min_instructions():
    with pytest.raises(PipelineConfigError, match="max_instructions"):
        InstructConfig(min_instructions=4, max_instructions=3)


def test_build_messages_has_system_then_each_demo_then_the_row(sources, pool):
    messages = build_messages(sources, pool[:5], CFG, DESCRIPTION, "vlm")
    assert (
        [m["role"] for m in messages], json.loads(messages[2]["content"])["instructions"], DESCRIPTION in messages[-1]["content"],
    ) == (["system"] + ["user", "assistant"] * 5 + ["user"], pool[0]["instructions"], True)


def test_build_messages_in_captions_mode_shows_the_demos_captions(sources, pool):
    messages = build_messages(sources, pool[:1], CFG, "Source Image caption: a dog", "captions")
    assert (pool[0]["source_caption"] in messages[1]["content"], pool[0]["description"] in messages[1]["content"],
            messages[-1]["content"].startswith("Captions of the two images")) == (True, False, True)


def test_rendered_messages_for_fixture_pair_match_snapshot():
    assert_prompt_snapshot(Instruct, InstructConfig(), "pair.json", "instruct_messages.txt")


# --- parse_instructions ---------------------------------------------------------------------------------


def test_parse_instructions_keeps_a_valid_list():
    raw = answer("Show this dog on a beach.", "Find the same pet near the sea with a stick.", "I want it outdoors on sand.")
    assert parse_instructions(raw, "", CFG, []) == ("ok", "", json.loads(raw)["instructions"])


def test_parse_instructions_accepts_a_bare_list_and_control_characters():
    raw = '["Show this dog\ton a beach.", "Find the same pet near the sea.", "I want it outdoors."]'
    assert parse_instructions(raw, "", CFG, [])[2][0] == "Show this dog on a beach."


@pytest.mark.parametrize("raw", ['{"instructions": ["cut', "", "not json", None])
def test_parse_instructions_rejects_invalid_json(raw):
    assert parse_instructions(raw, "", CFG, []) == ("rejected", "error:invalid_json", [])


@pytest.mark.parametrize("raw", ['{"instructions": "one"}', '{"other": []}', "42"])
def test_parse_instructions_rejects_a_wrong_shape(raw):
    assert parse_instructions(raw, "", CFG, [])[:2] == ("rejected", "error:schema")


def test_parse_instructions_passes_the_llm_error():
    assert parse_instructions(answer("a", "b", "c"), "error:truncated_output", CFG, [])[:2] == (
        "rejected", "error:truncated_output",
    )


def test_parse_instructions_filters_fewer_than_min_distinct():
    raw = answer("Show this dog on a beach.", "show this dog on a beach!", "Find it near the sea.")
    assert parse_instructions(raw, "", CFG, []) == (
        "filtered", "filter:too_few_instructions", ["Show this dog on a beach.", "Find it near the sea."],
    )


def test_parse_instructions_collapses_near_duplicates_keeping_the_first():
    raw = answer("Show the dog running on a sandy beach.", "Show a dog running on the sandy beach now.",
                 "Find it near the sea.", "I want it outdoors.", "What does it look like with a stick?")
    assert parse_instructions(raw, "", CFG, [])[2] == [
        "Show the dog running on a sandy beach.", "Find it near the sea.", "I want it outdoors.",
        "What does it look like with a stick?",
    ]


def test_parse_instructions_drops_an_instruction_copied_from_a_demonstration():
    demo = ["Show this landmark at night with its lights on."]
    raw = answer("Show this landmark at night with its lights on", "Find it near the sea.", "I want it outdoors.",
                 "What does it look like with a stick?")
    assert parse_instructions(raw, "", CFG, demo)[2] == [
        "Find it near the sea.", "I want it outdoors.", "What does it look like with a stick?",
    ]


def test_parse_instructions_caps_at_max_instructions():
    raw = answer(*[f"Show variant number {w} of it." for w in ("one", "two", "three", "four", "five", "six")])
    assert len(parse_instructions(raw, "", InstructConfig(max_instructions=4), [])[2]) == 4


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("Find the red car.", "find a red car", True),
        ("Show this dog on a beach.", "Show this dog on a snowy hill.", False),
        ("Show me this bridge at night with lights", "Show me this bridge at night with its lights", True),
    ],
)
def test_near_duplicate_rule_uses_normalised_words_and_jaccard(a, b, same):
    assert same_instruction(words(a), words(b), 0.8) is same


# --- the stage's steps over a hand-built table -------------------------------------------------------------


def rows() -> pa.Table:
    return pa.table({
        "id": ["a~b", "a~c", "a~d", "a~e"],
        "description": [DESCRIPTION, DESCRIPTION, "  ", DESCRIPTION],
        "description_mode": ["vlm", "vlm", "vlm", "captions"],
    })


class FakeLLM:
    """What `generate_json` adds: canned `_raw` / `_llm_error` per row id (null messages get nothing)."""

    def __init__(self, answers: dict[str, tuple[str, str]]) -> None:
        self.answers = answers

    def __call__(self, table: pa.Table) -> pa.Table:
        out = [self.answers[i] if m is not None else ("", "") for i, m in zip(table["id"].to_pylist(), table[MESSAGES].to_pylist())]
        return table.append_column(RAW, pa.array([r for r, _ in out], pa.string())).append_column(
            LLM_ERROR, pa.array([e for _, e in out], pa.string()))


def test_stage_steps_with_a_fake_llm_decide_every_row(sources):
    cfg = to_dict(CFG)
    good = answer("Show this dog on a beach.", "Find the same pet near the sea.", "I want it outdoors with a stick.")
    fake = FakeLLM({"a~b": (good, ""), "a~c": ("{not json", ""), "a~d": ("", ""), "a~e": (good, "")})
    out = parse_batch(fake(prompt_batch(rows(), sources, cfg)), cfg)
    assert (
        out[REASON].to_pylist(), out["instructions"].to_pylist()[0], [len(d) for d in out["demo_ids"].to_pylist()],
        out["instruct_raw"].to_pylist()[1], [c for c in out.column_names if c.startswith("_") and c not in (STATUS, REASON)],
    ) == (
        ["", "error:invalid_json", "filter:empty_description", ""], json.loads(good)["instructions"], [5] * 4,
        "{not json", [],
    )


def test_prompt_batch_records_the_drawn_demo_ids(sources, pool):
    out = prompt_batch(rows(), sources, to_dict(InstructConfig(seed=9)))
    expected = [[pool[i]["id"] for i in draw_demos(len(pool), 5, 9, r)] for r in rows()["id"].to_pylist()]
    assert (out["demo_ids"].to_pylist(), out[DEMO_TEXT].type) == (expected, pa.list_(pa.string()))


def test_tiny_llm_under_the_grammar_gives_parseable_answers(sources, tmp_path_factory):
    from pipeline.models.llm import HFChatJSON, HFGenerateFn
    from pipeline.models.tiny import build_tiny_qwen2

    config = InstructConfig(demos_per_row=1, max_instruction_chars=24, llm=LLMConfig(max_new_tokens=160))
    path = build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "qwen2")
    engine = HFChatJSON(str(path), config.llm, output_schema(config))
    cfg = to_dict(config)
    table = prompt_batch(rows().slice(0, 2), sources, cfg)
    out = parse_batch(HFGenerateFn.from_engine(engine, config.llm, 2)(table), cfg)
    # The grammar closes the JSON: no row is invalid or cut off; each is kept or has too few distinct.
    assert set(out[REASON].to_pylist()) <= {"", "filter:too_few_instructions"}


def test_cli_render_prompt_prints_the_instruct_messages_for_the_fixture_pair(capsys):
    from pipeline.cli import main

    code = main(["render-prompt", "instruct", "--row", "tests/fixtures/pair.json"])
    out = capsys.readouterr().out
    roles = [line[4:] for line in out.splitlines() if line.startswith("--- ")]
    assert (code, roles, "on a sandy beach, trotting with a stick" in out) == (
        0, ["system"] + ["user", "assistant"] * 5 + ["user"], True,
    )


def test_stage_prepare_checks_the_prompts_and_names_its_llm(tmp_path):
    from types import SimpleNamespace

    stage = Instruct(InstructConfig(llm=LLMConfig(model="/models/llm")),
                     SimpleNamespace(prompts_dir=default_prompts_dir(), cache_dir=tmp_path))
    stage.prepare()
    assert (stage.models(), stage.schema()["properties"]["instructions"]["maxItems"]) == (
        {"llm": "/models/llm via transformers"}, 5,
    )
