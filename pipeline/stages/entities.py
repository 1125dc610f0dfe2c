"""entities: find the query's main named entity and rewrite the query with the entity replaced by a
type phrase ("When was this tower built?"), so that an image of the entity must carry it (GME §1a
row 4). spaCy NER proposes candidates from the query and passage; the LLM decides and rewrites under
a JSON schema `{entity, entity_type, aliases, query}`; a leak check refuses rewrites that still name
the entity.

With `repair: rule`, an English question whose entity the LLM found but did not mask cleanly
(unchanged, empty or leaking rewrite) is masked by rule instead (text/mask.py) and kept when that
passes the same checks; `rewrite_source` says which ("llm" or "rule").

Input columns: id, doc_id, text, title, query. Output: every input column plus `entity`,
`entity_type`, `entity_aliases` (list), `rewritten_query`, `rewrite_source`, `ner_candidates` (list)
and `entities_raw` (the LLM's raw text, kept on rejects too). Dropped rows: LLM errors (`error:invalid_json`,
`error:schema`, `error:truncated_output`, `error:timeout`, `error:prompt_too_long`, `error:http_*`...),
`filter:no_entity`, `filter:entity_not_in_query`, `filter:empty_rewrite`, `filter:rewrite_unchanged`,
`filter:entity_leak`, `filter:alias_leak`, `filter:copied_example` (the entity is a shown few-shot
example's and the passage names none of the answer's names), `filter:entity_not_in_passage`
(neither the entity nor an alias the LLM gave occurs in the passage's title or text, with the leak
check's normalisation; `require_entity_in_passage: false` turns it off for cross-lingual corpora).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa

from pipeline.config import check
from pipeline.llmstage import LLMStage
from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW, LLMConfig
from pipeline.models.ner import NERConfig, load_ner, ner_candidates, ner_identity
from pipeline.prompts import load_examples, load_sources, render
from pipeline.stage import FILTERED, OK, REASON, REJECTED, STATUS, Resources, StageConfig, set_status
from pipeline.text.copied import COPIED_EXAMPLE, example_keys, is_copy
from pipeline.text.leak import contains, fold, leak_reason
from pipeline.text.mask import mask_entity

PROMPTS = ("entities/system.j2", "entities/user.j2", "entities/examples.yaml")
NER_COL = "_ner"
# The shown examples' entities and aliases (JSON), set when prompts are rendered, read by the parser.
COPY_COL = "_copy_keys"
ENTITY_NOT_IN_PASSAGE = "filter:entity_not_in_passage"


@dataclass(frozen=True)
class EntitiesConfig(StageConfig):
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)
    ner: NERConfig = dataclasses.field(default_factory=NERConfig)
    # The passage is cut to this many characters for NER and inside the prompt (the row keeps it all).
    passage_max_chars: int = 1500
    few_shot: int = 2
    # Entity tokens at least this long may not appear in the rewrite ("Sagrada" of "Sagrada Família").
    min_token_chars: int = 4
    # maxLength of the rewrite, and of the entity and each alias, in the JSON schema: a small model under
    # a grammar otherwise may never close a string.
    max_rewrite_chars: int = 200
    max_entity_chars: int = 80
    # What to do when the LLM named the entity but its rewrite is unchanged, empty or leaks: `none`
    # (filter the row) or `rule` (mask the entity as "this <type>"; English questions only, text/mask.py).
    repair: Literal["none", "rule"] = "none"
    # The entity (or an alias the LLM gave) must occur in the passage's title or text, else
    # `filter:entity_not_in_passage`: a small model names entities of its examples or of its own
    # knowledge. Turn off for cross-lingual corpora (entity names in another language than the passage).
    require_entity_in_passage: bool = True
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(batch_size=8, shard_rows=16))

    def __post_init__(self) -> None:
        check(self.passage_max_chars >= 100, "entities", "passage_max_chars", "must be >= 100")
        check(self.few_shot >= 0, "entities", "few_shot", "must be >= 0")
        check(self.min_token_chars >= 2, "entities", "min_token_chars", "must be >= 2")
        check(self.max_rewrite_chars >= 20, "entities", "max_rewrite_chars", "must be >= 20")
        check(self.max_entity_chars >= 10, "entities", "max_entity_chars", "must be >= 10")


def output_schema(cfg: EntitiesConfig) -> dict:
    def text(n: int) -> dict:
        return {"type": "string", "minLength": 1, "maxLength": n}

    return {
        "type": "object",
        "properties": {
            "entity": text(cfg.max_entity_chars),
            "entity_type": text(40),
            "aliases": {"type": "array", "items": text(cfg.max_entity_chars), "maxItems": 4},
            "query": text(cfg.max_rewrite_chars),
        },
        "required": ["entity", "entity_type", "aliases", "query"],
        "additionalProperties": False,
    }


def build_messages(sources: dict[str, str], cfg: EntitiesConfig, row: dict, cands: list[str]) -> list[dict]:
    system, user, _ = PROMPTS

    def ask(title: str | None, text: str, query: str, candidates: list[str]) -> dict:
        content = render(sources[user], user, title=title, text=text, query=query, candidates=candidates)
        return {"role": "user", "content": content}

    messages = [{"role": "system", "content": render(sources[system], system)}]
    for ex in shown_examples(sources, cfg):
        messages.append(ask(ex.get("title"), ex["text"], ex["query"], ex["candidates"]))
        answer = {k: ex["answer"][k] for k in ("entity", "entity_type", "aliases", "query")}
        messages.append({"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)})
    passage = (row.get("text") or "")[: cfg.passage_max_chars]
    messages.append(ask(row.get("title"), passage, row["query"], cands))
    return messages


def _clean(value: Any) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


def _unchanged_key(text: str) -> str:
    return fold(text).rstrip("?!.。？！ ")


# Reasons `repair: rule` may fix: the LLM found the entity but its rewrite is not usable.
REPAIRABLE = frozenset(
    {"filter:rewrite_unchanged", "filter:empty_rewrite", "filter:entity_leak", "filter:alias_leak"}
)


def parse_entity(raw: str, llm_error: str, query: str, cfg: EntitiesConfig, passage: str | None = None,
                 copied: frozenset[str] | None = None) -> tuple:
    """(status, reason, entity, entity_type, aliases, rewritten, rewrite_source) for one LLM output.

    Failed rows carry None for the strings and [] for aliases; `rewrite_source` is "llm", "rule"
    (`repair: rule` masked the entity) or None when no rewrite was kept. `aliases` may be missing (backends
    without guided decoding drop it); any other missing key or wrong type is `error:schema`.
    A kept answer then passes `grounding_reason` against `passage` (title and text) and the shown
    examples' entity keys `copied`; None skips those checks.
    """
    if llm_error:
        return REJECTED, llm_error, None, None, [], None, None
    try:
        # strict=False: constrained decoding can emit raw control characters inside strings.
        obj = json.loads(raw, strict=False)
    except (json.JSONDecodeError, TypeError):
        return REJECTED, "error:invalid_json", None, None, [], None, None
    fields = ("entity", "entity_type", "query")
    aliases = obj.get("aliases", []) if isinstance(obj, dict) else None
    if (
        not isinstance(obj, dict)
        or any(not isinstance(obj.get(k), str) for k in fields)
        or not (isinstance(aliases, list) and all(isinstance(a, str) for a in aliases))
    ):
        return REJECTED, "error:schema", None, None, [], None, None
    entity, etype, rewritten = (_clean(obj[k]) for k in fields)
    aliases = [a for a in (_clean(x) for x in aliases) if a]
    reason = rewrite_reason(entity, aliases, query, rewritten, cfg.min_token_chars)
    if reason in REPAIRABLE and cfg.repair == "rule":
        masked = mask_entity(query, entity, etype)
        if masked and not rewrite_reason(entity, aliases, query, masked, cfg.min_token_chars):
            reason, rewritten, source = "", masked, "rule"
        else:
            source = None
    else:
        source = None if reason else "llm"
    if not reason:
        reason = grounding_reason(entity, aliases, passage, copied, cfg)
    if reason:
        return FILTERED, reason, entity or None, etype or None, aliases, rewritten or None, None
    return OK, "", entity, etype or None, aliases, rewritten, source


def grounding_reason(entity: str, aliases: list[str], passage: str | None,
                     copied: frozenset[str] | None, cfg: EntitiesConfig) -> str:
    """`filter:copied_example` or `filter:entity_not_in_passage` for a rewrite that passed the leak
    check, else "". A shown example's entity (or alias) is a copy only where the passage names none of
    the answer's names: a passage about the Golden Gate Bridge may well have it as its entity. A rewrite
    equal to an example's is no copy by itself ("When did this landmark open?" fits many landmarks)."""
    grounded = passage is None or any(contains(passage, name) for name in [entity, *aliases])
    if copied is not None and not grounded and is_copy(entity, copied):
        return COPIED_EXAMPLE
    if cfg.require_entity_in_passage and not grounded:
        return ENTITY_NOT_IN_PASSAGE
    return ""


def shown_examples(sources: dict[str, str], cfg: EntitiesConfig) -> list[dict]:
    """The few-shot examples the prompt shows (the first `few_shot`)."""
    name = PROMPTS[2]
    return load_examples(sources[name], name)[: cfg.few_shot]


def copy_keys(sources: dict[str, str], cfg: EntitiesConfig) -> frozenset[str]:
    """The shown examples' entities and aliases, as comparison keys."""
    shown = shown_examples(sources, cfg)
    return example_keys([ex["answer"]["entity"] for ex in shown]
                        + [a for ex in shown for a in ex["answer"].get("aliases", [])])


def rewrite_reason(entity: str, aliases: list[str], query: str, rewritten: str, min_token_chars: int) -> str:
    """The first `filter:*` reason a parsed answer earns, or "" when it is kept."""
    if not entity:
        return "filter:no_entity"
    if not contains(query, entity):
        return "filter:entity_not_in_query"
    if not rewritten:
        return "filter:empty_rewrite"
    if _unchanged_key(rewritten) == _unchanged_key(query):
        return "filter:rewrite_unchanged"
    return leak_reason(entity, aliases, query, rewritten, min_token_chars)


def ner_batch(table: pa.Table, cfg: dict) -> pa.Table:
    """Ray Data task: add `_ner`, the NER candidates (list<string>) for every query row.

    The passage is cut to `passage_max_chars`, as in the prompt: candidates come from what the LLM sees.
    """
    config = EntitiesConfig.from_dict(cfg)
    ner = load_ner(config.ner)
    queries, texts = table["query"].to_pylist(), table["text"].to_pylist()
    cands = [
        ner_candidates(ner, q or "", (x or "")[: config.passage_max_chars], config.ner)
        for q, x in zip(queries, texts)
    ]
    return table.append_column(NER_COL, pa.array(cands, pa.list_(pa.string())))


def prompt_batch(table: pa.Table, sources: dict[str, str], cfg: dict) -> pa.Table:
    """Ray Data task: add the chat messages (`_messages`, JSON) from the row and its `_ner` candidates."""
    config = EntitiesConfig.from_dict(cfg)
    rows = table.select(["title", "text", "query", NER_COL]).to_pylist()
    msgs = [
        json.dumps(build_messages(sources, config, r, r[NER_COL] or []), ensure_ascii=False) for r in rows
    ]
    keys = json.dumps(sorted(copy_keys(sources, config)), ensure_ascii=False)
    table = table.append_column(COPY_COL, pa.array([keys] * table.num_rows, pa.string()))
    return table.append_column(MESSAGES, pa.array(msgs, pa.string()))


def ner_prompt_batch(table: pa.Table, sources: dict[str, str], cfg: dict) -> pa.Table:
    """`ner_batch` then `prompt_batch`, as one glue step (one pass over the shard, spaCy per process)."""
    return prompt_batch(ner_batch(table, cfg), sources, cfg)


def parse_batch(table: pa.Table, cfg: dict) -> pa.Table:
    """Ray Data task: parse and leak-check every output; set the output columns and the status."""
    config = EntitiesConfig.from_dict(cfg)
    keys = {k: frozenset(json.loads(k)) for k in set(table[COPY_COL].to_pylist())}
    passages = [f"{title or ''}\n{text or ''}" for title, text in zip(table["title"].to_pylist(), table["text"].to_pylist())]
    parsed = [
        parse_entity(raw or "", err or "", q or "", config, passage, keys[copied])
        for raw, err, q, passage, copied in zip(
            table[RAW].to_pylist(), table[LLM_ERROR].to_pylist(), table["query"].to_pylist(), passages,
            table[COPY_COL].to_pylist(),
        )
    ]
    # The vLLM path restores rows from Python dicts: `_messages` is gone and an all-empty `_ner` would
    # come back as list<null>, so the types are set here rather than trusted.
    out = table.drop_columns([c for c in (MESSAGES, LLM_ERROR, STATUS, REASON, COPY_COL) if c in table.column_names])
    out = out.set_column(
        out.column_names.index(NER_COL), "ner_candidates", out[NER_COL].cast(pa.list_(pa.string()))
    )
    out = out.set_column(out.column_names.index(RAW), "entities_raw", out[RAW].cast(pa.string()))
    columns = {
        "entity": (pa.string(), 2),
        "entity_type": (pa.string(), 3),
        "entity_aliases": (pa.list_(pa.string()), 4),
        "rewritten_query": (pa.string(), 5),
        "rewrite_source": (pa.string(), 6),
    }
    for name, (tp, i) in columns.items():
        out = out.append_column(name, pa.array([p[i] for p in parsed], tp))
    return set_status(out, [p[0] for p in parsed], [p[1] for p in parsed])


class Entities(LLMStage):
    name: ClassVar[str] = "entities"
    config_cls: ClassVar[type] = EntitiesConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id", "doc_id", "text", "title", "query")
    output_columns: ClassVar[tuple[str, ...]] = (
        "entity",
        "entity_type",
        "entity_aliases",
        "rewritten_query",
        "rewrite_source",
        "ner_candidates",
        "entities_raw",
    )
    prompt_files: ClassVar[tuple[str, ...]] = PROMPTS
    render_batch = staticmethod(ner_prompt_batch)
    parse_batch = staticmethod(parse_batch)

    def check_prompts(self) -> None:
        build_messages(self.sources, self.config, {"title": "T", "text": "A passage.", "query": "Q?"}, ["E"])
        self.ner_id = ner_identity(self.config.ner)

    def schema(self) -> dict:
        return output_schema(self.config)

    def models(self) -> dict[str, str]:
        return {**super().models(), "ner": self.ner_id}

    @staticmethod
    def render_row(prompts_dir: Path, cfg: EntitiesConfig, row: dict) -> list[dict]:
        passage = (row.get("text") or "")[: cfg.passage_max_chars]
        cands = ner_candidates(load_ner(cfg.ner), row["query"], passage, cfg.ner)
        return build_messages(load_sources(prompts_dir, PROMPTS), cfg, row, cands)
