"""The dataset card in a real browser: its body rendered as the Hub renders a README (tests/support/card_html.py),
served with the card's folder from a loopback HTTP server (so relative image sources resolve as on the Hub),
loaded in headless Chromium (Debian's `chromium`, scripts/install_chromium.sh), its DOM dumped after the
load event and the page screenshotted whole.

A small script in the page writes, on `load`, each <img>'s naturalWidth into `data-natural-width` (0: the
image did not load or does not decode) and the page height into the body, so the dumped DOM says what the
reader saw. The check functions below read that DOM and the screenshot; they take no browser, so their
failures are unit-tested on hand-made input (tests/unit/card/test_card_browser_checks.py).

Chromium never leaves the machine: every host name but 127.0.0.1 resolves to nothing
(`--host-resolver-rules`), and its background services are off (the flags below; without them Chromium
keeps opening connections to Google's hosts).
"""

from __future__ import annotations

import html
import io
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.support.card_html import card_body_html
from tests.support.local_server import LocalServer

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
WIDTH = 1280
MAX_HEIGHT = 16_000
PAGE = "/__card__.html"
# Roughly the Hub's look: a readable column, ruled tables, thumbnails at their given width.
STYLE = """
body { font-family: "DejaVu Sans", "WenQuanYi Zen Hei", sans-serif; font-size: 15px; line-height: 1.5;
       color: #1f2937; background: #fff; margin: 0; }
article { max-width: 1180px; margin: 24px auto; padding: 0 24px; }
table { border-collapse: collapse; margin: 12px 0; }
th, td { border: 1px solid #d1d5db; padding: 4px 10px; vertical-align: top; text-align: left; }
th { background: #f3f4f6; }
code { background: #f3f4f6; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
pre { background: #f3f4f6; padding: 10px; overflow-x: auto; }
img { max-width: 100%; }
"""
CHECK_SCRIPT = """
window.addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-natural-width", String(img.naturalWidth));
  document.body.setAttribute("data-page-height", String(document.documentElement.scrollHeight));
  document.body.setAttribute("data-checked", "loaded");
});
"""


def chromium_state() -> Path:
    """Where scripts/install_chromium.sh keeps its log and failure reason (`<state>.failed`)."""
    return Path(os.environ.get("FUSEGEN_CHROMIUM_STATE", Path.home() / ".cache" / "fusegen" / "chromium"))


def chromium_unavailable() -> str:
    """Why the browser tests cannot run here ("" when they can): the reason install_chromium.sh recorded."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return ""
    failed = Path(f"{chromium_state()}.failed")
    if failed.is_file() and failed.read_text().strip():
        return f"Chromium unavailable: {failed.read_text().strip().splitlines()[0]}"
    return f"Chromium unavailable: no {CHROMIUM}; run scripts/install_chromium.sh (as root; scripts/test.sh does)"


def page_html(card: str, title: str = "dataset card") -> str:
    """The card's body as the Hub shows it, in a page that reports what loaded."""
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        # No favicon request: every request the server sees is the page or the card's own.
        '<link rel="icon" href="data:,">'
        f"<style>{STYLE}</style></head>\n<body><article>\n{card_body_html(card)}\n</article>"
        f"<script>{CHECK_SCRIPT}</script></body></html>\n"
    )


class _CardFolder(BaseHTTPRequestHandler):
    """GET of the page, or of a file under the card's folder; every request is recorded with its status."""

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        if path == PAGE:
            body, code, kind = owner.page.encode(), 200, "text/html; charset=utf-8"
        else:
            target = (owner.root / path.lstrip("/")).resolve()
            inside = owner.root == target or owner.root in target.parents
            if inside and target.is_file():
                body, code, kind = target.read_bytes(), 200, _content_type(target)
            else:
                body, code, kind = b"not found", 404, "text/plain"
        owner.requests.append((path, code))
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        """Silence the per-request stderr log."""


def _content_type(path: Path) -> str:
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
            ".svg": "image/svg+xml", ".webp": "image/webp"}.get(path.suffix.lower(), "application/octet-stream")


class CardServer(LocalServer):
    def __init__(self, root: Path, page: str) -> None:
        super().__init__(_CardFolder)
        self.root, self.page = root.resolve(), page
        self.requests: list[tuple[str, int]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PAGE}"


@dataclass
class Rendered:
    dom: str  # the page's DOM after the load event (Chromium's --dump-dom)
    screenshot: Path  # the whole page as PNG
    requests: list[tuple[str, int]] = field(default_factory=list)  # (path, HTTP status) the browser asked for


def _chromium(args: list[str], profile: Path, timeout: float) -> str:
    """Runs Chromium once in its own session (a timeout ends its helper processes too); returns its stdout."""
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium {' '.join(args)} took over {timeout} s") from None
    if proc.returncode != 0:
        raise AssertionError(f"chromium {' '.join(args)} exited {proc.returncode}:\n{err[-3000:]}")
    return out


def render_card(card_path: Path, out_dir: Path, timeout: float = 120) -> Rendered:
    """Loads the card at `card_path` (its images relative to its folder) in headless Chromium: the DOM after
    load, and a screenshot of the whole page at `out_dir/card.png`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shot = out_dir / "card.png"
    with CardServer(card_path.parent, page_html(card_path.read_text(), card_path.name)) as server:
        dom = _chromium(["--dump-dom", f"--window-size={WIDTH},900", server.url], out_dir / "profile-dom", timeout)
        height = min(page_height(dom), MAX_HEIGHT)
        _chromium([f"--screenshot={shot}", f"--window-size={WIDTH},{height}", server.url],
                  out_dir / "profile-shot", timeout)
        requests = list(server.requests)
    return Rendered(dom=dom, screenshot=shot, requests=requests)


# --- checks on what the browser showed (no browser needed) ---------------------------------------------------


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


class _Dom(HTMLParser):
    """Images, tables, the visible text and the attribute values of a dumped DOM."""

    TEXT_ATTRS = ("src", "href", "alt", "title")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str | None]] = []
        self.tables: list[Table] = []
        self.texts: list[str] = []
        self.body: dict[str, str | None] = {}
        self._skip = 0  # inside <script>/<style>
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._header_row = False

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "body":
            self.body = a
        elif tag == "img":
            self.images.append(a)
        elif tag == "table":
            self.tables.append(Table([], []))
        elif tag == "tr":
            self._row, self._header_row = [], False
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            self._header_row |= tag == "th"
        for name in self.TEXT_ATTRS:
            if a.get(name):
                self.texts.append(a[name])

    def handle_endtag(self, tag) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self.tables:
            table = self.tables[-1]
            if self._header_row and not table.header:
                table.header = self._row
            else:
                table.rows.append(self._row)
            self._row = None

    def handle_data(self, data) -> None:
        if self._skip:
            return
        self.texts.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(dom: str) -> _Dom:
    parser = _Dom()
    parser.feed(dom)
    parser.close()
    if parser.body.get("data-checked") != "loaded":
        raise AssertionError("the page's load script did not run: the DOM was dumped before the load event, "
                             "or this is not a page from page_html()")
    return parser


def page_height(dom: str) -> int:
    return int(_parse(dom).body.get("data-page-height") or 0)


def broken_images(dom: str) -> list[str]:
    """The `src` of every image the reader sees as broken (it did not load or decode: naturalWidth 0)."""
    return [str(img.get("src")) for img in _parse(dom).images if img.get("data-natural-width") in (None, "", "0")]


def image_sources(dom: str) -> list[str]:
    return [str(img.get("src")) for img in _parse(dom).images]


def tables(dom: str) -> list[Table]:
    return _parse(dom).tables


def local_paths(dom: str, paths: list[str | Path]) -> list[str]:
    """The `paths` (absolute paths of this machine) that the page shows: in its text, in the collapsed
    <details>, or in an image/link address. A path counts only as a whole path: `/tmp` is found in
    "/tmp/x" and "at /tmp.", not in "https://host/tmp/x" or "/tmpfoo"."""
    found = []
    page = "\n".join(_parse(dom).texts)
    for path in dict.fromkeys(str(p).rstrip("/") for p in paths):
        if not path.startswith("/") or len(path) < 2:
            raise ValueError(f"not an absolute path: {path!r}")
        if re.search(rf"(?<![\w.:/~-]){re.escape(path)}(?![\w-])", page) or f"file://{path}" in page:
            found.append(path)
    return found


def screenshot_problem(png: Path, min_std: float = 8.0) -> str:
    """"" for a screenshot a reader could read; else what is wrong (does not decode, too small, blank)."""
    from PIL import Image, ImageStat, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(png.read_bytes())) as img:
            img.load()
            gray = img.convert("L")
    except (OSError, UnidentifiedImageError) as e:
        return f"{png} does not decode as an image: {e}"
    if gray.width < 200 or gray.height < 200:
        return f"{png} is {gray.width}x{gray.height} px: too small to show a card"
    std = ImageStat.Stat(gray).stddev[0]
    if std < min_std:
        return f"{png} is blank (pixel standard deviation {std:.1f} < {min_std})"
    return ""
