"""A dataset card as a Hub reader sees it: its Markdown body rendered to HTML (CommonMark with tables),
and the `src` of every image the HTML shows."""

from __future__ import annotations

from html.parser import HTMLParser


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def card_image_sources(card: str) -> list[str]:
    """The image sources of the card's body (after its YAML front matter), in order."""
    from markdown_it import MarkdownIt

    parser = _Images()
    parser.feed(MarkdownIt("commonmark").enable("table").render(card.split("\n---\n", 1)[1]))
    return parser.srcs
