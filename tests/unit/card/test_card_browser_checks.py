"""The checks of tests/support/card_browser.py can fail: on hand-made DOMs and screenshots (no browser), and on a
hand-made card with a missing image, an image that does not decode, an image on another host and an
absolute path, loaded in real headless Chromium (skipped with install_chromium.sh's reason where there is
none). tests/e2e/test_card_in_browser.py runs the same checks on the real runner's card."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.support.card_browser import (
    broken_images,
    chromium_unavailable,
    image_sources,
    local_paths,
    page_html,
    render_card,
    screenshot_problem,
    tables,
)


def dom(body: str, checked: bool = True) -> str:
    mark = ' data-checked="loaded" data-page-height="1200"' if checked else ""
    return f"<html><head><title>t</title></head><body{mark}>{body}<script>var p = '/srv/secret';</script></body></html>"


def test_an_image_that_did_not_load_is_broken_and_one_never_measured_too():
    page = dom('<img src="a.jpg" data-natural-width="160"><img src="b.jpg" data-natural-width="0">'
               '<img src="c.jpg">')
    assert broken_images(page) == ["b.jpg", "c.jpg"]
    assert image_sources(page) == ["a.jpg", "b.jpg", "c.jpg"]
    assert broken_images(dom('<img src="a.jpg" data-natural-width="160">')) == []


def test_a_dom_dumped_before_the_load_script_ran_is_refused_not_read_as_clean():
    with pytest.raises(AssertionError, match="load script did not run"):
        broken_images(dom('<img src="b.jpg" data-natural-width="0">', checked=False))


def test_tables_are_read_with_their_header_and_rows():
    page = dom("<table><thead><tr><th>id</th><th>query</th></tr></thead><tbody>"
               "<tr><td><code>r1</code></td><td>What is  <em>it</em>?</td></tr>"
               "<tr><td>r2</td><td>—</td></tr></tbody></table><p>no table</p>")
    [table] = tables(page)
    assert table.header == ["id", "query"]
    assert table.rows == [["r1", "What is it?"], ["r2", "—"]]
    assert tables(dom("<p>| id | query |</p>")) == []


@pytest.mark.parametrize("where", [
    "<p>read from /tmp/run-7/export.</p>",
    "<details><summary>run.yaml</summary><pre><code>prompts_dir: /tmp/run-7\n</code></pre></details>",
    '<img src="file:///tmp/run-7/a.jpg" data-natural-width="5">',
    '<a href="/tmp/run-7/x">x</a>',
    "<td>/tmp/run-7</td>",
])
def test_an_absolute_path_anywhere_a_reader_sees_it_is_found(where):
    assert local_paths(dom(where), ["/tmp/run-7", "/home/nobody"]) == ["/tmp/run-7"]


def test_a_path_is_found_only_as_a_whole_path():
    page = dom('<p>see https://example.org/tmp/run-7 and /tmp/run-70 and ~/tmp/run-7 and .../tmp/run-7</p>')
    assert local_paths(page, ["/tmp/run-7"]) == []
    assert local_paths(dom("<p>/tmpfs and /tmp_x</p>"), ["/tmp"]) == []
    assert local_paths(page, ["/tmp"]) == ["/tmp"]  # /tmp/run-70 is under /tmp
    # The page's own script is not text a reader sees.
    assert local_paths(dom("<p>x</p>"), ["/srv/secret"]) == []
    with pytest.raises(ValueError, match="not an absolute path"):
        local_paths(page, ["tmp/run-7"])


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_a_blank_undecodable_or_tiny_screenshot_is_a_problem_and_a_page_of_text_is_not(tmp_path):
    shot = tmp_path / "s.png"
    shot.write_bytes(png(Image.new("RGB", (1280, 900), "white")))
    assert "blank" in screenshot_problem(shot)
    shot.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert "does not decode" in screenshot_problem(shot)
    shot.write_bytes(png(Image.new("RGB", (100, 50), "white")))
    assert "too small" in screenshot_problem(shot)
    page = Image.new("RGB", (1280, 900), "white")
    draw = ImageDraw.Draw(page)
    for y in range(20, 880, 24):
        draw.text((24, y), "| id | query | positive passage (opening) | one negative |" * 3, fill="black")
    shot.write_bytes(png(page))
    assert screenshot_problem(shot) == ""


def test_the_front_matter_is_hidden_and_the_table_and_image_are_html():
    page = page_html("---\nlicense: other\n---\n\n# Card\n\n| a | b |\n|---|---|\n| <img src=\"x.jpg\"> | 2 |\n")
    assert "license: other" not in page
    assert "<table>" in page and '<img src="x.jpg">' in page


@pytest.mark.skipif(bool(chromium_unavailable()), reason=chromium_unavailable())
def test_a_card_with_bad_images_and_a_local_path_fails_the_checks_in_chromium(tmp_path):
    folder = tmp_path / "export"
    (folder / "assets").mkdir(parents=True)
    (folder / "assets" / "ok.png").write_bytes(png(Image.new("RGB", (64, 48), "#3b6ea5")))
    (folder / "assets" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    card = folder / "README.md"
    card.write_text(
        "---\nlicense: other\ntags: [fusegen]\n---\n\n# fusegen test\n\n"
        "| id | image | query |\n|---|---|---|\n"
        '| `r1` | <img src="assets/ok.png" alt="query image" width="120"> | What is this landmark? |\n'
        '| `r2` | <img src="assets/missing.jpg" alt="query image" width="120"> | Where is it? |\n'
        '| `r3` | <img src="assets/corrupt.jpg" alt="query image" width="120"> | 长城有多长？ |\n\n'
        "![histogram](https://example.org/score.png)\n\n"
        f"<details><summary>run.yaml</summary>\n\n```yaml\nprompts_dir: {tmp_path}/prompts\n```\n\n</details>\n"
    )
    shown = render_card(card, tmp_path / "browser")
    assert broken_images(shown.dom) == ["assets/missing.jpg", "assets/corrupt.jpg", "https://example.org/score.png"]
    assert ("/assets/ok.png", 200) in shown.requests and ("/assets/missing.jpg", 404) in shown.requests
    # Nothing left loopback: the other host's image was never fetched from anywhere.
    assert not any("score.png" in p for p, _ in shown.requests)
    assert local_paths(shown.dom, [tmp_path, folder, Path.home()]) == [str(tmp_path)]
    assert local_paths(shown.dom.replace(str(tmp_path), "..."), [tmp_path]) == []
    [table] = tables(shown.dom)
    assert table.header == ["id", "image", "query"] and [r[0] for r in table.rows] == ["r1", "r2", "r3"]
    assert "license: other" not in shown.dom
    assert screenshot_problem(shown.screenshot) == ""
