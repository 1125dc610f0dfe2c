"""Leak check for entity-masked query rewrites (English, accented Latin, CJK)."""

from __future__ import annotations

import re
import unicodedata

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_WORD = re.compile(r"\w+", re.UNICODE)


def fold(text: str) -> str:
    """Casefolded, accents stripped (NFKD without combining marks), apostrophes/dashes to spaces."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", re.sub(r"[’'`´\-‐-―_]", " ", stripped)).strip()


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def contains(haystack: str, needle: str) -> bool:
    """Folded containment: on word boundaries for Latin script, by characters for CJK."""
    h, n = fold(haystack), fold(needle)
    if not n:
        return False
    if has_cjk(n):
        return n in h
    return re.search(rf"(?<!\w){re.escape(n)}(?!\w)", h) is not None


def cjk_runs(text: str, size: int = 2) -> set[str]:
    """Every run of `size` consecutive CJK characters in text."""
    runs: set[str] = set()
    for block in re.findall(f"{_CJK.pattern}+", fold(text)):
        runs.update(block[i : i + size] for i in range(len(block) - size + 1))
    return runs


def leak_reason(entity: str, aliases: list[str], rewritten: str, min_token_chars: int = 4) -> str:
    """"" when `rewritten` names neither the entity, nor a long token of it, nor an alias."""
    if contains(rewritten, entity):
        return "filter:entity_leak"
    tokens = [t for t in _WORD.findall(fold(entity)) if len(t) >= min_token_chars and not has_cjk(t)]
    if any(contains(rewritten, t) for t in tokens):
        return "filter:entity_leak"
    if has_cjk(entity) and cjk_runs(entity) & cjk_runs(rewritten):
        return "filter:entity_leak"
    if any(len(fold(a)) >= 2 and contains(rewritten, a) for a in aliases):
        return "filter:alias_leak"
    return ""
