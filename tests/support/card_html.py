"""A dataset card as a Hub reader sees it: its Markdown body (the YAML front matter hidden) rendered to HTML
as GitHub-flavoured Markdown (CommonMark with raw HTML, tables and strikethrough), and the `src` of every
image the HTML shows."""

from __future__ import annotations

from html.parser import HTMLParser


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def card_body(card: str) -> str:
    """The card without its YAML front matter (which the Hub hides)."""
    if not card.startswith("---\n"):
        return card
    return card.split("\n---\n", 1)[1]


def card_body_html(card: str) -> str:
    """The card's body as HTML, the way the Hub renders a README (GFM; bare-URL autolinks left out)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(card_body(card))


def card_image_sources(card: str) -> list[str]:
    """The image sources of the card's body (after its YAML front matter), in order."""
    parser = _Images()
    parser.feed(card_body_html(card))
    return parser.srcs
