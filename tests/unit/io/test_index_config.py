"""pipeline/io/index_config.py: the one `index:` shape of consistency, images.retrieval, gme_score and
negatives; the keys it replaced are config errors naming the new key; kind and nlist reach each stage's
IndexSpec, nprobe never enters an index key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.errors import PipelineConfigError
from pipeline.io.index_config import IndexConfig
from pipeline.settings import build_stages, load_config

# Every section that owns an index, and its config under the run config.
SECTIONS = ("consistency", "images.retrieval", "gme_score", "negatives")


def section_yaml(section: str, body: str) -> str:
    """`a.b` + `k: v` -> the YAML nesting `a:\\n  b:\\n    k: v`."""
    lines = []
    for depth, part in enumerate(section.split(".")):
        lines.append("  " * depth + f"{part}:")
    indent = "  " * len(section.split("."))
    lines += [indent + line for line in body.splitlines()]
    return "\n".join(lines) + "\n"


def load(tmp_path: Path, section: str, body: str, overrides: list[str] | None = None):
    path = tmp_path / "run.yaml"
    path.write_text(section_yaml(section, body), encoding="utf-8")
    return load_config(path, overrides), path


def read(config, section: str):
    node = config
    for part in section.split("."):
        node = getattr(node, part)
    return node


# --- the old keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize(("old", "new"), [("ivf_nlist", "index.nlist"), ("ivf_nprobe", "index.nprobe")])
def test_old_ivf_key_is_an_error_naming_the_new_key_and_the_file(tmp_path, section, old, new):
    with pytest.raises(PipelineConfigError) as err:
        load(tmp_path, section, f"{old}: 64")
    assert f"`{section}.{old}` was renamed: use `{section}.{new}`" in str(err.value)
    assert str(tmp_path / "run.yaml") in str(err.value)


@pytest.mark.parametrize("section", SECTIONS)
def test_old_key_beside_the_new_shape_is_still_an_error(tmp_path, section):
    with pytest.raises(PipelineConfigError, match=rf"use `{section}\.index\.nprobe`"):
        load(tmp_path, section, "index: {kind: ivf}\nivf_nprobe: 64")


@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_index_as_a_string_is_an_error_naming_index_kind(tmp_path, section, kind):
    with pytest.raises(PipelineConfigError) as err:
        load(tmp_path, section, f"index: {kind}")
    assert f"use `{section}.index.kind: {kind}`" in str(err.value)
    assert str(tmp_path / "run.yaml") in str(err.value)


def test_index_as_a_string_from_set_names_index_kind_and_set(repo_root):
    with pytest.raises(PipelineConfigError) as err:
        load_config(repo_root / "configs" / "demo.yaml", ["consistency.index=ivf"])
    assert "use `consistency.index.kind: ivf`" in str(err.value) and "--set" in str(err.value)


@pytest.mark.parametrize("value", ["[ivf]", "true", "3"])
def test_index_as_another_non_mapping_is_the_plain_mapping_error(tmp_path, value):
    with pytest.raises(PipelineConfigError, match=r"`negatives\.index` must be a mapping"):
        load(tmp_path, "negatives", f"index: {value}")


def test_unknown_key_inside_index_lists_the_known_keys(tmp_path):
    with pytest.raises(PipelineConfigError, match=r"`consistency\.index\.nlists` is not a known key.*nprobe"):
        load(tmp_path, "consistency", "index: {nlists: 4}")


# --- range checks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize(("body", "field"), [("nlist: -1", "nlist"), ("nprobe: 0", "nprobe")])
def test_range_error_names_the_full_key_and_the_file(tmp_path, section, body, field):
    with pytest.raises(PipelineConfigError) as err:
        load(tmp_path, section, f"index: {{{body}}}")
    assert f"`{section}.index.{field}`" in str(err.value) and str(tmp_path / "run.yaml") in str(err.value)


@pytest.mark.parametrize(("kwargs", "field"), [({"nlist": -1}, "nlist"), ({"nprobe": 0}, "nprobe")])
def test_index_config_rejects_out_of_range_values(kwargs, field):
    with pytest.raises(PipelineConfigError, match=field):
        IndexConfig(**kwargs)


def test_wrong_kind_lists_the_kinds(tmp_path):
    with pytest.raises(PipelineConfigError, match=r"`gme_score\.index\.kind` must be one of 'flat', 'ivf'"):
        load(tmp_path, "gme_score", "index: {kind: hnsw}")


# --- the new shape loads, and reaches each stage's IndexSpec ---------------------------------------------


@pytest.mark.parametrize("section", SECTIONS)
def test_new_shape_loads_every_field(tmp_path, section):
    config, _ = load(tmp_path, section, "index: {kind: ivf, nlist: 128, nprobe: 32}")
    assert read(config, section).index == IndexConfig(kind="ivf", nlist=128, nprobe=32)


@pytest.mark.parametrize("section", SECTIONS)
def test_unset_fields_keep_their_defaults(tmp_path, section):
    config, _ = load(tmp_path, section, "index: {nprobe: 64}")
    assert read(config, section).index == IndexConfig(kind="flat", nlist=0, nprobe=64)


def declared_specs(config) -> dict:
    """Each index-owning stage's declared IndexSpec, its models set as `prepare` would set them."""
    context = SimpleNamespace(run_uri="unused", index_uri="unused", cache_dir=None)
    stages = {s.name: s for s in build_stages(config, context)}
    for stage in stages.values():
        stage.model_path, stage.model_id = "unused", "model-id"
        stage.retriever_path, stage.retriever_id = "unused", "model-id"
    return {name: stages[name].indexes()[0] for name in ("consistency", "images", "gme_score", "negatives")}


def index_yaml(kind: str, nlist: int, nprobe: int) -> list[str]:
    value = f"{{kind: {kind}, nlist: {nlist}, nprobe: {nprobe}}}"
    return [f"{s}.index={value}" for s in SECTIONS] + ["gme_score.top_k=5"]


def test_kind_and_nlist_reach_the_index_spec_of_every_stage(repo_root):
    specs = declared_specs(load_config(repo_root / "configs" / "demo.yaml", index_yaml("ivf", 24, 3)))
    assert {name: (s.kind, s.nlist) for name, s in specs.items()} == {
        name: ("ivf", 24) for name in ("consistency", "images", "gme_score", "negatives")
    }


def test_nprobe_changes_no_index_key_and_nlist_changes_every_one(repo_root):
    demo = repo_root / "configs" / "demo.yaml"

    def keys(nlist: int, nprobe: int) -> dict:
        specs = declared_specs(load_config(demo, index_yaml("ivf", nlist, nprobe)))
        return {name: spec.key("source-fp") for name, spec in specs.items()}

    base = keys(24, 3)
    assert keys(24, 99) == base
    other = keys(25, 3)
    assert all(other[name] != base[name] for name in base)


def test_gme_score_and_negatives_share_one_pool_whatever_their_nprobe(repo_root):
    overrides = ["gme_score.top_k=5", "gme_score.index={kind: ivf, nprobe: 8}",
                 "negatives.index={kind: ivf, nprobe: 64}"]
    specs = declared_specs(load_config(repo_root / "configs" / "demo.yaml", overrides))
    assert specs["gme_score"].key("ingest-fp") == specs["negatives"].key("ingest-fp")


def test_gme_score_and_negatives_with_different_kinds_get_two_pools(repo_root):
    overrides = ["gme_score.top_k=5", "gme_score.index={kind: ivf}", "negatives.index={kind: flat}"]
    specs = declared_specs(load_config(repo_root / "configs" / "demo.yaml", overrides))
    assert specs["gme_score"].key("ingest-fp") != specs["negatives"].key("ingest-fp")


def test_nprobe_is_part_of_the_stage_config_the_fingerprint_reads(repo_root):
    cfg = load_config(repo_root / "configs" / "demo.yaml").consistency
    changed = dataclasses.replace(cfg, index=IndexConfig(nprobe=99))
    assert cfg.semantic_dict()["index"]["nprobe"] == 16
    assert changed.semantic_dict() != cfg.semantic_dict()


@pytest.mark.parametrize("name", ["base.yaml", "demo.yaml", "gpu.yaml", "vllm-cpu.yaml"])
def test_shipped_configs_load_with_the_new_shape(repo_root, name):
    config = load_config(repo_root / "configs" / name)
    assert all(isinstance(read(config, s).index, IndexConfig) for s in SECTIONS)


def test_gpu_config_keeps_ivf_on_every_index(repo_root):
    config = load_config(repo_root / "configs" / "gpu.yaml")
    assert {s: read(config, s).index.kind for s in SECTIONS} == {s: "ivf" for s in SECTIONS}
