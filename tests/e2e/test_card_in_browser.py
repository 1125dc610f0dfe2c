"""The real runner's dataset card as a reader of the Hub sees it: the session's `gme_real_run` (the whole GME
track on an embedded Ray, tests/e2e/conftest.py), its card rendered as the Hub renders a README and loaded
in headless Chromium from a loopback server (tests/support/card_browser.py). Checked on what the browser
showed: every image loads, the tables render with their headers and rows, no path of this machine is on
the page, and the whole-page screenshot is a page, not a blank. Without Chromium (scripts/install_chromium.sh)
these tests are skipped with the reason the install recorded, never passed."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from pipeline.card import build_card
from pipeline.card.render import CardConfig
from pipeline.io.fs import RunFS
from pipeline.status import collect_manifests
from tests.support.card_browser import (
    broken_images,
    chromium_unavailable,
    image_sources,
    local_paths,
    render_card,
    screenshot_problem,
    tables,
)
from tests.support.card_html import card_image_sources

# A mark, not a fixture: it skips before the session's Ray cluster and real run are set up.
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(chromium_unavailable()), reason=chromium_unavailable())]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = ["id", "image", "query", "positive passage (opening)", "one negative"]
FUNNEL = ["stage", "in", "out", "filtered", "rejected", "top reasons"]
MODELS = ["stage", "role", "model", "revision", "license"]


@pytest.fixture(scope="module")
def shown(gme_real_run, tmp_path_factory):
    """(run copy, card text, what Chromium showed); the screenshot stays under the test's tmp dir."""
    root = tmp_path_factory.mktemp("card-browser")
    run = root / "run"
    shutil.copytree(gme_real_run[0], run)
    card = Path(build_card(str(run)))
    return run, card.read_text(), render_card(card, root / "browser")


def table_with(header: list[str], dom: str):
    found = [t for t in tables(dom) if t.header == header]
    assert len(found) == 1, [t.header for t in tables(dom)]
    return found[0]


def test_every_image_of_the_card_loads_in_the_browser(shown):
    _, card, page = shown
    assert broken_images(page.dom) == []
    srcs = image_sources(page.dom)
    # Each image of the card's Markdown is an image on the page (none shown as escaped text), and the
    # example thumbnails and score histograms are among them.
    assert srcs == card_image_sources(card)
    assert any(s.startswith("assets/example_") for s in srcs) and any(s.startswith("assets/score_") for s in srcs)
    asked = dict(page.requests)
    assert {s: asked.get(f"/{s}") for s in srcs} == {s: 200 for s in srcs}
    assert [p for p, code in page.requests if code != 200] == []


def test_the_tables_render_with_their_headers_and_the_real_rows(shown):
    run, _, page = shown
    examples = table_with(EXAMPLES, page.dom)
    assert len(examples.rows) == CardConfig().examples
    for row in examples.rows:
        assert len(row) == len(EXAMPLES) and all(row[i] for i in (0, 2, 3, 4)), row
    funnel = table_with(FUNNEL, page.dom)
    manifests = collect_manifests(RunFS.from_uri(str(run)))
    assert [r[:5] for r in funnel.rows] == [
        [m["stage"], *(str(m["rows"][k]) for k in ("in", "out", "filtered", "rejected"))] for m in manifests
    ]
    models = table_with(MODELS, page.dom)
    assert {(r[0], r[1]) for r in models.rows} == {
        (m["stage"], role) for m in manifests for role in (m.get("models") or {})
    }


def test_the_page_shows_no_path_of_this_machine(shown, gme_real_run, tiny_cache):
    run, _, page = shown
    paths = [run, gme_real_run[0], gme_real_run[0].parent, tiny_cache, REPO, REPO / "prompts", Path.home(),
             tempfile.gettempdir(), "/tmp"]
    assert local_paths(page.dom, paths) == []


def test_the_screenshot_is_the_whole_card(shown):
    from PIL import Image

    _, _, page = shown
    assert screenshot_problem(page.screenshot) == ""
    with Image.open(page.screenshot) as img:
        # The whole page, not the first screen: the card is longer than one 900 px window.
        assert img.width == 1280 and img.height > 900
