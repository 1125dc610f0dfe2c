"""The dataset card and `fusegen push` on the run dir the real runner wrote: the session's `gme_real_run`
(tests/e2e/conftest.py, the whole GME track on an embedded Ray), not a hand-written one, so what the card
and the push read (manifests, markers, the export's files) is what the writer writes. Each test works on
a copy of the run. The rendering details (tasks, score fields, seeds, size buckets) are unit-tested in
tests/unit/card on small run dirs; these tests check the card against the real run's own files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.card import build_card
from pipeline.errors import PublishError
from pipeline.io.fs import RunFS
from pipeline.io.hub import RetryConfig
from pipeline.publish import PushConfig, local_files, push_run
from pipeline.status import collect_manifests
from tests.support.card_html import card_image_sources
from tests.support.ledger import check_ledgers

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("01_ingest", "02_doc2query", "03_consistency", "04_entities", "05_images", "06_clip_filter",
           "07_gme_score", "08_negatives", "export")


@pytest.fixture
def real_run(gme_real_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(gme_real_run[0], copy)
    return copy


def front_matter(card: str) -> dict:
    return yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, re.DOTALL).group(1))


def split_rows(run: Path) -> dict[str, int]:
    rows: dict[str, int] = {}
    for path in sorted((run / "export" / "data").glob("*.parquet")):
        split = path.name.split("-", 1)[0]
        rows[split] = rows.get(split, 0) + pq.ParquetFile(path).metadata.num_rows
    return rows



def test_the_real_run_is_what_the_card_expects_a_run_to_be(real_run):
    """The ledgers the card will print hold against the plan and the files (tests/support/ledger.py)."""
    manifests = check_ledgers(real_run, FOLDERS)
    assert manifests["export"]["rows"]["out"] == sum(split_rows(real_run).values()) > 0


def test_the_card_funnel_and_summary_are_the_manifests_and_the_export_files(real_run):
    card = Path(build_card(str(real_run))).read_text()
    manifests = collect_manifests(RunFS.from_uri(str(real_run)))
    assert [m["stage"] for m in manifests][-1] == "export" and len(manifests) == len(FOLDERS)
    for m in manifests:
        r = m["rows"]
        assert f"| {m['stage']} | {r['in']} | {r['out']} | {r['filtered']} | {r['rejected']} |" in card, m["stage"]
    rows = split_rows(real_run)
    parts = ", ".join(f"{s}: {n}" for s, n in sorted(rows.items()))
    assert f"{sum(rows.values())} rows of synthetic" in card and f"({parts})" in card
    files = front_matter(card)["configs"][0]["data_files"]
    assert [f["split"] for f in files] == sorted(rows)


def test_the_card_metadata_of_the_real_run_passes_the_hub_validation(real_run, hub):
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(build_card(str(real_run)))
    card.validate(repo_type="dataset")
    assert any(p == "/api/validate-yaml" for _, p, _ in hub.requests)
    assert card.data.to_dict()["size_categories"] == ["n<1K"]


def test_every_image_the_card_references_exists_in_the_real_export(real_run):
    srcs = card_image_sources(Path(build_card(str(real_run))).read_text())
    assert any(s.startswith("assets/example_") for s in srcs)
    assert [s for s in srcs if not (real_run / "export" / s).is_file()] == []


def test_models_and_prompt_hashes_are_the_ones_the_manifests_recorded(real_run):
    card = Path(build_card(str(real_run))).read_text()
    manifests = collect_manifests(RunFS.from_uri(str(real_run)))
    models = [(m["stage"], role) for m in manifests for role in (m.get("models") or {})]
    prompts = [(m["stage"], name, digest) for m in manifests for name, digest in (m.get("prompts") or {}).items()]
    assert models and prompts
    for stage, role in models:
        assert f"| {stage} | {role} | `" in card, (stage, role)
    for stage, name, digest in prompts:
        assert digest == hashlib.sha256((REPO / "prompts" / name).read_bytes()).hexdigest()
        assert f"| {stage} | `{name}` | `{digest[:16]}` |" in card


def test_a_real_manifest_edited_to_lose_a_row_is_refused(real_run):
    path = real_run / "03_consistency" / "_manifest.json"
    m = json.loads(path.read_text())
    m["rows"]["filtered"] += 1
    path.write_text(json.dumps(m))
    with pytest.raises(PublishError, match="stage consistency ledger does not balance"):
        build_card(str(real_run))
    assert not (real_run / "export" / "README.md").exists()


def test_a_real_export_missing_a_file_is_refused(real_run):
    counted = json.loads((real_run / "export" / "_manifest.json").read_text())["rows"]["out"]
    gone = min((real_run / "export" / "data").glob("*.parquet"))
    left = counted - pq.ParquetFile(gone).metadata.num_rows
    gone.unlink()
    with pytest.raises(PublishError, match=f"export counted {counted} rows out but export/data holds {left}"):
        build_card(str(real_run))


def test_push_uploads_the_real_export_byte_for_byte_with_the_card_last(real_run, hub):
    report = push_run(str(real_run), PushConfig(repo="me/real", endpoint=hub.endpoint,
                                               retry=RetryConfig(max_attempts=4, base_wait_s=0.0)))
    local = {f.path_in_repo: Path(f.local_path).read_bytes() for f in local_files(str(real_run / "export"))}
    assert hub.files("me/real") == local
    assert any(p.startswith("data/") for p in local) and "README.md" in local
    assert hub.commits[-1] == ["README.md"] and report.commits == len(hub.commits)


def test_the_card_of_the_real_run_names_no_path_of_the_machine(real_run, gme_real_run):
    card = Path(build_card(str(real_run))).read_text()
    for path in (str(REPO), str(real_run), str(gme_real_run[0].parent)):
        assert path not in card, path
