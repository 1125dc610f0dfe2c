"""The exports load with both `datasets` majors their consumers run on: 3.6 (ms-swift 3.x pins
datasets<4) and 5.x. Each check runs tests/support/datasets_loader.py in a venv of that version
(scripts/install_datasets_venvs.sh builds both once per machine under ~/.cache/fusegen/datasets-venvs,
a stamp says when; skipped with the reason when no package index is reachable) and compares what
`datasets` yields, row by row, with the files as pyarrow / json read them, images as PIL sizes.

Before the features metadata was written in the spelling both read (pipeline/stages/export.py
`portable_features`), datasets 3.6 failed on every Parquet file: "Feature type 'List' not found".
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.card import build_card
from pipeline.exporters import export_run
from tests.conftest import REPO
from tests.support.gme_run import make_gme_run
from tests.support.megapairs_run import make_megapairs_run

MAJORS = {"ds3": "3.6.", "ds5": "5."}
LOADER = REPO / "tests" / "support" / "datasets_loader.py"


@pytest.fixture(scope="session")
def datasets_venvs() -> Path:
    root = Path(os.environ.get("FUSEGEN_DATASETS_VENVS", Path.home() / ".cache" / "fusegen" / "datasets-venvs"))
    try:
        done = subprocess.run(["bash", str(REPO / "scripts" / "install_datasets_venvs.sh")], check=False,
                              capture_output=True, text=True, timeout=900, env={**os.environ, "FUSEGEN_DATASETS_VENVS": str(root)})
    except subprocess.TimeoutExpired:
        pytest.skip(f"scripts/install_datasets_venvs.sh took over 900 s building {root}")
    if done.returncode != 0:
        failed = Path(f"{root}.failed")
        pytest.skip(failed.read_text().splitlines()[0] if failed.exists() else done.stderr.strip()[-300:])
    return root


def load(venv: Path, *args: str):
    """What the loader script prints, run in `venv` with an empty HF cache of its own (nothing reused)."""
    with tempfile.TemporaryDirectory(prefix="fusegen-hf-") as home:
        return _load(venv, home, *args)


def _load(venv: Path, home: str, *args: str):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": home}
    done = subprocess.run([str(venv / "bin" / "python"), str(LOADER), *args], check=False, capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _image(struct: dict | None) -> dict | None:
    return None if struct is None else {"pil": list(Image.open(io.BytesIO(struct["bytes"])).size)}


def plain(value):
    """A row as pyarrow reads it, image structs as the PIL sizes `datasets` decodes them to."""
    if isinstance(value, dict) and set(value) == {"bytes", "path"}:
        return _image(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def parquet_splits(folder: Path, names: dict[str, str] | None = None) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*.parquet")):
        split = path.name.split("-", 1)[0]
        out.setdefault((names or {}).get(split, split), []).extend(plain(pq.read_table(path).to_pylist()))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    gme = make_gme_run(tmp_path_factory.mktemp("gme-majors"), rows=6, negatives=2, validation_ratio=0.4)
    build_card(str(gme))
    megapairs = make_megapairs_run(tmp_path_factory.mktemp("mp-majors"), rows=6, validation_ratio=0.4)
    out = tmp_path_factory.mktemp("exports")
    for fmt in ("gme", "mmeb", "ms-swift"):
        export_run(str(gme), fmt, str(out / fmt))
    export_run(str(megapairs), "mmeb", str(out / "mmeb-megapairs"))
    return {"gme": gme, "megapairs": megapairs, "out": out}


def loads(runs: dict[str, Path]) -> dict[str, list[str]]:
    """Every load the tests check: name -> the loader's arguments."""
    out = runs["out"]
    return {
        "run-gme": ["parquet", str(runs["gme"] / "export" / "data")],
        "run-megapairs": ["parquet", str(runs["megapairs"] / "export" / "data")],
        "gme-folder": ["folder", str(out / "gme")],
        "mmeb": ["folder", str(out / "mmeb"), "fusegen", "original"],
        "mmeb-megapairs": ["folder", str(out / "mmeb-megapairs"), "fusegen", "original"],
        "ms-swift": ["json", str(out / "ms-swift" / "train.jsonl")],
    }


@pytest.fixture(scope="module", params=list(MAJORS))
def loaded(request, datasets_venvs, runs, tmp_path_factory) -> dict:
    """name -> what `datasets` of one major yielded, every load in one process with an empty HF cache."""
    major = request.param
    specs = loads(runs)
    spec_file = tmp_path_factory.mktemp(f"loads-{major}") / "specs.json"
    spec_file.write_text(json.dumps(list(specs.values())))
    results = load(datasets_venvs / major, "many", str(spec_file))
    return {"major": major, **dict(zip(specs, results))}


def rows_of(result: dict) -> dict[str, list[dict]]:
    assert "error" not in result, result.get("error")
    return {split: s["rows"] for split, s in result["splits"].items()}


@pytest.mark.parametrize("run", ["gme", "megapairs"])
def test_the_run_export_loads_with_pil_images_on_both_majors(runs, loaded, run):
    result = loaded[f"run-{run}"]
    assert rows_of(result) == parquet_splits(runs[run] / "export" / "data") and result["splits"]
    assert result["version"].startswith(MAJORS[loaded["major"]])
    assert any("Image(" in s["features"] for s in result["splits"].values())


def test_the_gme_export_loads_by_folder_through_its_cards_configs(runs, loaded):
    out = runs["out"] / "gme"
    front = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    # Features in the card would override the Parquet's; none there, or none in the 4.0-only spelling.
    assert "List" not in json.dumps(front.get("dataset_info", {})) and front["configs"]
    rows = rows_of(loaded["gme-folder"])
    assert rows == parquet_splits(out / "data") and set(rows) == {"train", "validation"}


@pytest.mark.parametrize("name", ["mmeb", "mmeb-megapairs"])
def test_the_mmeb_export_loads_as_vlm2vecs_load_mmeb_dataset_calls_it(runs, loaded, name):
    out = runs["out"] / name
    assert rows_of(loaded[name]) == {"original": parquet_splits(out / "fusegen")["original"]}


def test_the_ms_swift_jsonl_loads_on_both_majors(runs, loaded):
    path = runs["out"] / "ms-swift" / "train.jsonl"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows_of(loaded["ms-swift"]) == {"train": lines}
