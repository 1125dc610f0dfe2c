"""Rule-based entity masking for English queries: the repair the entities stage may apply when the
LLM found the right entity but did not rewrite the query cleanly (small models often return the
question unchanged).

"When did the Golden Gate Bridge open?" + ("Golden Gate Bridge", "landmark")
-> "When did this landmark open?"; a possessive stays ("Frida Kahlo's garden" -> "this painter's
garden"). A mention used as a modifier ("the most famous Inca temple") is left alone. Only English
questions are masked (the phrase is English), and only with a plain type
phrase of one to three lowercase-able words that the question does not already use.
"""

from __future__ import annotations

import re

from pipeline.text.leak import fold, has_cjk

# Question words and auxiliaries that mark a question as English (German "wann/der", French "quand").
_ENGLISH_CUES = frozenset({
    "what", "when", "where", "who", "whom", "whose", "which", "why", "how",
    "is", "was", "are", "were", "does", "did", "do", "has", "have", "the", "of",
})
_TYPE_PHRASE = re.compile(r"[A-Za-z][A-Za-z\- ]{0,38}")
_DETERMINER = r"(?:(?:the|a|an)\s+)?"


def _words(text: str) -> set[str]:
    """The folded Latin-letter words of `text` (accents stripped, apostrophes and dashes split)."""
    return set(re.findall(r"[a-z]+", fold(text)))


def looks_english(text: str) -> bool:
    """At least one English question word or auxiliary, and no CJK characters."""
    return not has_cjk(text) and bool(_ENGLISH_CUES & set(re.findall(r"[a-z]+", text.casefold())))


def type_phrase(entity_type: str) -> str | None:
    """`entity_type` as a lowercase phrase of 1-3 ASCII words, or None when it is not one."""
    phrase = " ".join(entity_type.split()).lower()
    if not _TYPE_PHRASE.fullmatch(phrase) or len(phrase.split()) > 3:
        return None
    return phrase


def mask_entity(query: str, entity: str, entity_type: str) -> str | None:
    """`query` with each mention of `entity` (and a determiner before it) replaced by "this <type>".

    None when the query is not English, the type is not a plain phrase, the type's words already
    occur in the query, or the entity does not occur verbatim (ignoring case) on word boundaries.
    """
    phrase, entity = type_phrase(entity_type), entity.strip()
    if not entity or phrase is None or not looks_english(query) or _words(phrase) & _words(query):
        return None
    pattern = re.compile(rf"(?<!\w){_DETERMINER}{re.escape(entity)}(?!\w)", re.IGNORECASE)
    matches = list(pattern.finditer(query))
    if not matches or any(_is_modifier(query, m) for m in matches):
        return None

    def replace(match: re.Match) -> str:
        at_start = match.start() == 0 or query[: match.start()].rstrip().endswith((".", "?", "!", ":"))
        return ("This " if at_start else "this ") + phrase

    return pattern.sub(replace, query)


def _is_modifier(query: str, match: re.Match) -> bool:
    """The mention modifies a noun inside a noun phrase ("the most famous Inca temple"): a
    determiner shortly before it and a lowercase word right after. "this <type>" would not fit."""
    before = re.findall(r"[A-Za-z]+", query[: match.start()])[-3:]
    after = re.match(r"\s+([a-z]+)", query[match.end() :])
    return after is not None and any(w.lower() in ("the", "a", "an") for w in before)
