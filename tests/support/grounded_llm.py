"""A fake LLM grounded in its prompt, for the local OpenAI-compatible server (tests/support/openai_server.py):
deterministic answers built from the passage it is sent, so every stage gets rows and two runs of one corpus
give the same rows. The fault runs, the real GME run and the vLLM GME track answer with it.

- doc2query: two questions from the passage's first words (the round-trip filter can find the passage);
- entities: the query's longest capitalised word that the passage has, masked as 'this thing' (none:
  "Nowhere", which the stage's grounding filter drops);
- the image describer: "a photograph of <entity> in daylight".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from tests.support.openai_server import RecordedRequest, Reply, ok

MASK = "this thing"


def passage_of(request: RecordedRequest) -> str:
    """The doc2query prompt's passage."""
    return request.last_user_text.split("Passage:", 1)[-1].split("\n\nWrite", 1)[0].strip()


def pairs_reply(passage: str) -> Reply:
    """doc2query's answer: two question/answer pairs from the passage's first words."""
    words = re.findall(r"\w+", passage)[:8] or ["it"]
    pairs = [
        {"query": f"What does the text say about {' '.join(words[:4])}?", "answer": " ".join(words[:3])},
        {"query": f"Which facts involve {' '.join(words[4:8] or words)}?", "answer": " ".join(words[4:6] or words)},
    ]
    return ok(json.dumps({"pairs": pairs}))


def entity_reply(request: RecordedRequest, rewrite: Callable[[str, str, str], str] | None = None) -> Reply:
    """The entities step's answer. `rewrite(query, entity, masked)` may change the rewritten query (a model
    that did not mask, or masked and then named the entity anyway)."""
    text = request.last_user_text
    query = text.rsplit("Question:", 1)[-1].strip()
    # A name from the passage, as a model that reads it would pick (not "Which" or "What").
    passage = text.split("Passage:", 1)[-1].rsplit("Candidates:", 1)[0]
    names = sorted((n for n in re.findall(r"\b[A-Z][a-z]{3,}\b", query) if n in passage), key=len, reverse=True)
    if not names:
        return ok(json.dumps({"entity": "Nowhere", "entity_type": "place", "aliases": [], "query": query}))
    entity = names[0]
    masked = re.sub(rf"\b{entity}\b", MASK, query)
    if rewrite is not None:
        masked = rewrite(query, entity, masked)
    return ok(json.dumps({"entity": entity, "entity_type": "thing", "aliases": [], "query": masked}))


def description_reply(request: RecordedRequest) -> Reply:
    entity = request.last_user_text.split("Entity:", 1)[-1].split("(", 1)[0].strip()
    return ok(json.dumps({"description": f"a photograph of {entity} in daylight"}))


def schema_properties(request: RecordedRequest) -> dict:
    return request.body["response_format"]["json_schema"]["schema"]["properties"]


class GroundedLLM:
    """Answers doc2query, entities and the image describer from what it is sent (see the module)."""

    def __call__(self, request: RecordedRequest) -> Reply:
        properties = schema_properties(request)
        if "entity" in properties:
            return entity_reply(request)
        if "description" in properties:
            return description_reply(request)
        return pairs_reply(passage_of(request))
