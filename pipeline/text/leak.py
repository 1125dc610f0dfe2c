"""Leak check for entity-masked query rewrites (English, accented Latin, CJK).

Everything is compared after `fold` (casefold, accents stripped, apostrophes and dashes as spaces):
Latin-script names on word boundaries, CJK by characters. A rewrite leaks when it still contains the
entity, an alias, an entity word of at least `min_token_chars` characters, or (CJK) any two
consecutive characters of the entity. Words and CJK pairs the original query already had *outside*
the entity mention may stay as often as they were there ("Is the Tower Bridge older than the Tower of
London?" -> "Is this landmark older than the Tower of London?" is clean).
"""

from __future__ import annotations

import re
import unicodedata

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_WORD = re.compile(r"\w+", re.UNICODE)
ENTITY_LEAK, ALIAS_LEAK = "filter:entity_leak", "filter:alias_leak"


def fold(text: str) -> str:
    """Casefolded, accents stripped (NFKD without combining marks), apostrophes/dashes to spaces."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", re.sub(r"[’'`´\-‐-―_]", " ", stripped)).strip()


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def same_subject(title: str | None, entity: str | None) -> bool:
    """Whether `entity` names what `title` names, folded as `fold` folds: every word of one among the
    other's ("Hubble" / "Hubble Space Telescope", "Marie Curie" / "Marie Skłodowska-Curie"), or for CJK
    one inside the other. True when either is missing or empty: there is nothing to judge by.

    Examples:
        >>> same_subject("Sagrada Família", "Gaudí"), same_subject("Voyager 1", "Earth")
        (False, False)
    """
    t, e = fold(title or ""), fold(entity or "")
    if not t or not e:
        return True
    if has_cjk(t) or has_cjk(e):
        return t in e or e in t
    tw, ew = set(_WORD.findall(t)), set(_WORD.findall(e))
    return ew <= tw or tw <= ew


def _pattern(folded_needle: str) -> re.Pattern:
    if has_cjk(folded_needle):
        return re.compile(re.escape(folded_needle))
    return re.compile(rf"(?<!\w){re.escape(folded_needle)}(?!\w)")


def contains(haystack: str, needle: str) -> bool:
    """Folded containment: on word boundaries for Latin script, by characters for CJK."""
    n = fold(needle)
    return bool(n) and _pattern(n).search(fold(haystack)) is not None


def _count(folded_haystack: str, folded_needle: str) -> int:
    return len(_pattern(folded_needle).findall(folded_haystack))


def cjk_runs(text: str, size: int = 2) -> set[str]:
    """Every run of `size` consecutive CJK characters in text (folded)."""
    runs: set[str] = set()
    for block in re.findall(f"{_CJK.pattern}+", fold(text)):
        runs.update(block[i : i + size] for i in range(len(block) - size + 1))
    return runs


def _outside(original: str, names: list[str]) -> str:
    """The folded original with every mention of the names cut out (replaced by a separator)."""
    rest = fold(original)
    for name in sorted({fold(n) for n in names if fold(n)}, key=len, reverse=True):
        rest = _pattern(name).sub(" | ", rest)
    return rest


def leak_reason(entity: str, aliases: list[str], original: str, rewritten: str, min_token_chars: int) -> str:
    """`filter:entity_leak`, `filter:alias_leak`, or "" when `rewritten` no longer names the entity.

    Args:
        entity: the entity as the LLM returned it (expected to occur in `original`).
        aliases: other names; those shorter than 2 folded characters are ignored.
        original: the query before the rewrite; its words outside the entity mention are allowed.
        rewritten: the rewrite to check.
        min_token_chars: entity words shorter than this ("of", "the", "Dom") are not evidence.
    """
    aliases = [a for a in aliases if len(fold(a)) >= 2]
    if contains(rewritten, entity):
        return ENTITY_LEAK
    folded_rewrite, rest = fold(rewritten), _outside(original, [entity, *aliases])
    tokens = {t for t in _WORD.findall(fold(entity)) if len(t) >= min_token_chars and not has_cjk(t)}
    if any(_count(folded_rewrite, t) > _count(rest, t) for t in tokens):
        return ENTITY_LEAK
    if any(_count(folded_rewrite, r) > _count(rest, r) for r in cjk_runs(entity)):
        return ENTITY_LEAK
    if any(contains(rewritten, a) for a in aliases):
        return ALIAS_LEAK
    return ""
