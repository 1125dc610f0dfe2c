"""Few-shot copies: a small model under a grammar often answers with its prompt's example instead of
the row's (the demo once paired a Chinese passage about the Great Wall with "Golden Gate Bridge", the
entity of the first example). `example_keys` folds the strings the shown examples answer with, so a
stage can refuse an output equal to one of them (`filter:copied_example`).

Keys are compared after `text.leak.fold` (case, accents, apostrophes and dashes) with trailing
punctuation stripped, the normalisation of the leak check.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.text.leak import fold

COPIED_EXAMPLE = "filter:copied_example"


def copy_key(text: str | None) -> str:
    """The comparison key of one string ("" for none)."""
    return fold(text or "").rstrip("?!.。？！ ")


def example_keys(values: Iterable[str | None]) -> frozenset[str]:
    """The keys of the example strings (empty ones left out)."""
    return frozenset(k for k in map(copy_key, values) if k)


def is_copy(text: str | None, keys: frozenset[str]) -> bool:
    key = copy_key(text)
    return bool(key) and key in keys
