"""pipeline/prompts.py: strict rendering, loading prompt files, and `fusegen render-prompt`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import PipelineConfigError
from pipeline.prompts import load_examples, load_sources, render


def test_render_fills_variables_and_strips_outer_whitespace():
    assert render("\n  Write {{ n }} pairs.  \n", "t.j2", n=3) == "Write 3 pairs."


def test_render_with_a_missing_variable_names_the_template():
    with pytest.raises(PipelineConfigError, match=r"prompts: doc2query/user\.j2: 'title' is undefined"):
        render("Title: {{ title }}", "doc2query/user.j2", text="x")


def test_render_syntax_error_names_the_template_and_line():
    with pytest.raises(PipelineConfigError, match=r"broken\.j2: syntax error on line 2"):
        render("ok\n{% if %}", "broken.j2")


def test_load_sources_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(PipelineConfigError, match="nope.j2"):
        load_sources(tmp_path, ("doc2query/nope.j2",))


def test_load_examples_requires_a_list_of_mappings():
    with pytest.raises(PipelineConfigError, match="must be a YAML list of mappings"):
        load_examples("title: not a list\n", "doc2query/examples.yaml")


def test_cli_render_prints_every_message_of_the_fixture_row(repo_root):
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "render-prompt", "doc2query", "--row", "tests/fixtures/doc.json"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    roles = [line[4:] for line in out.splitlines() if line.startswith("--- ")]
    assert (
        roles,
        "Passage: The Golden Gate Bridge is a suspension bridge spanning the Golden Gate, the strait" in out,
    ) == (
        ["system", "user", "assistant", "user", "assistant", "user"],
        True,
    )



ROW_FIELDS = ("title", "text", "query", "rewritten_query", "entity", "entity_type", "answer")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=8,
)


@given(stage=st.sampled_from(["doc2query", "entities"]),
       row=st.one_of(JSON_VALUES, st.fixed_dictionaries({}, optional={f: JSON_VALUES for f in ROW_FIELDS})))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_render_prompt_answers_any_json_row_with_messages_or_a_clear_error(tmp_path, capsys, stage, row):
    from pipeline.cli import main

    path = tmp_path / "row.json"
    path.write_text(json.dumps(row))
    try:
        code = main(["render-prompt", stage, "--row", str(path)])
    except SystemExit as exc:  # argparse's error(): usage and one line on stderr
        code = exc.code
    out = capsys.readouterr()
    assert code in (0, 2)
    if code == 0:
        assert out.out.startswith("--- system\n")
    else:
        assert "error:" in out.err and "Traceback" not in out.err
