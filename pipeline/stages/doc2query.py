"""doc2query: an LLM writes N {query, answer} pairs per passage under a JSON-schema grammar.

Input columns: id, doc_id, text, title. Output: one row per query slot (fanout N), with id
(`<doc_id>-q<k>`), query, answer, query_index, llm_raw (the model's raw text, kept for prompt
debugging) and every input column. Slots that fail are rejects carrying the raw text:
`error:invalid_json`, `error:truncated_output`, `error:schema`, `error:missing_pair`,
`error:prompt_too_long`,
`filter:empty_query`, `filter:empty_answer`, `filter:duplicate_query`, `filter:query_copies_passage`,
`filter:copied_example` (the query, or an answer the passage does not contain, equals one of a shown
few-shot example about something the passage never names).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from pipeline.config import check
from pipeline.llmstage import LLMStage
from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW, LLMConfig
from pipeline.prompts import load_examples, load_sources, render
from pipeline.stage import (
    FILTERED,
    OK,
    REASON,
    REJECTED,
    SLOT,
    STATUS,
    Resources,
    StageConfig,
    set_status,
)
from pipeline.text.copied import COPIED_EXAMPLE, example_keys, is_copy
from pipeline.text.leak import contains

PROMPTS = ("doc2query/system.j2", "doc2query/user.j2", "doc2query/examples.yaml")
# The shown examples' query/answer keys a row's output may not copy (JSON), from render to parse.
COPY_COL = "_copy_keys"
_CTRL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class Doc2QueryConfig(StageConfig):
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)
    queries_per_passage: int = 3
    max_query_chars: int = 200
    max_answer_chars: int = 200
    # The passage is cut to this many characters inside the prompt (the row keeps the full text).
    passage_max_chars: int = 3000
    few_shot: int = 2
    # Question types the model names for each pair (`{"type", "query", "answer"}`, the type first), asked to
    # be all different within a passage: a small model otherwise often asks the same question twice
    # (filter:duplicate_query). Empty: pairs without a type.
    query_types: tuple[str, ...] = ()
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(batch_size=8, shard_rows=16))

    def __post_init__(self) -> None:
        check(len(set(self.query_types)) == len(self.query_types) and all(t.strip() for t in self.query_types),
              "doc2query", "query_types", f"must be distinct non-empty names (got {list(self.query_types)})")
        check(1 <= self.queries_per_passage <= 20, "doc2query", "queries_per_passage", "must be in 1..20")
        check(self.max_query_chars >= 10, "doc2query", "max_query_chars", "must be >= 10")
        check(self.max_answer_chars >= 1, "doc2query", "max_answer_chars", "must be >= 1")
        check(self.passage_max_chars >= 100, "doc2query", "passage_max_chars", "must be >= 100")
        check(self.few_shot >= 0, "doc2query", "few_shot", "must be >= 0")


def output_schema(cfg: Doc2QueryConfig) -> dict:
    n = cfg.queries_per_passage
    typed = {"type": {"enum": list(cfg.query_types)}} if cfg.query_types else {}
    pair = {
        "type": "object",
        "properties": {
            **typed,
            "query": {"type": "string", "minLength": 1, "maxLength": cfg.max_query_chars},
            "answer": {"type": "string", "minLength": 1, "maxLength": cfg.max_answer_chars},
        },
        "required": [*typed, "query", "answer"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"pairs": {"type": "array", "items": pair, "minItems": n, "maxItems": n}},
        "required": ["pairs"],
        "additionalProperties": False,
    }


def build_messages(sources: dict[str, str], cfg: Doc2QueryConfig, title: str | None, text: str) -> list[dict]:
    n = cfg.queries_per_passage
    system, user = PROMPTS[0], PROMPTS[1]
    types = list(cfg.query_types)
    messages = [{"role": "system", "content": render(sources[system], system, n=n, types=types)}]
    for ex in shown_examples(sources, cfg):
        # The examples' pairs carry a `type`; shown only when the config asks for types.
        pairs = [{k: v for k, v in p.items() if k != "type" or types} for p in list(ex["pairs"])[:n]]
        messages.append({"role": "user", "content": render(sources[user], user, title=ex.get("title"), text=ex["text"], n=len(pairs), types=types)})
        messages.append({"role": "assistant", "content": json.dumps({"pairs": pairs}, ensure_ascii=False)})
    messages.append(
        {"role": "user", "content": render(sources[user], user, title=title, text=text[: cfg.passage_max_chars], n=n, types=types)}
    )
    return messages


def clean(value: Any) -> str:
    return " ".join(_CTRL.sub(" ", value).split()) if isinstance(value, str) else ""


def shown_examples(sources: dict[str, str], cfg: Doc2QueryConfig) -> list[dict]:
    """The few-shot examples the prompt shows (the first `few_shot`)."""
    return load_examples(sources[PROMPTS[2]], PROMPTS[2])[: cfg.few_shot]


def foreign_keys(shown: list[dict], title: str | None, text: str) -> list[str]:
    """Copy keys of the shown examples' queries and answers, for the examples whose title the passage
    (title and text) does not name: asked of such a passage, they can only be copied."""
    passage = f"{title or ''}\n{text}"
    foreign = [ex for ex in shown if not ex.get("title") or not contains(passage, ex["title"])]
    return sorted(example_keys(v for ex in foreign for p in ex["pairs"] for v in (p["query"], p["answer"])))


def parse_pairs(raw: str, llm_error: str, n: int, passage: str,
                copied: frozenset[str] = frozenset()) -> list[tuple[str, str, str, str]]:
    """(status, reason, query, answer) for each of the n slots of one passage's output; `copied`: the
    `foreign_keys` of the row's prompt."""
    if llm_error:
        return [(REJECTED, llm_error, "", "")] * n
    try:
        # strict=False: constrained decoding can emit raw control characters inside strings.
        obj = json.loads(raw, strict=False)
    except (json.JSONDecodeError, TypeError):
        return [(REJECTED, "error:invalid_json", "", "")] * n
    pairs = obj.get("pairs") if isinstance(obj, dict) else None
    if not isinstance(pairs, list):
        return [(REJECTED, "error:schema", "", "")] * n
    out, seen = [], set()
    passage_key = clean(passage).casefold()
    for k in range(n):
        if k >= len(pairs):
            out.append((REJECTED, "error:missing_pair", "", ""))
            continue
        item = pairs[k]
        if not isinstance(item, dict) or not isinstance(item.get("query"), str):
            out.append((REJECTED, "error:schema", "", ""))
            continue
        if not isinstance(item.get("answer", ""), str):
            out.append((REJECTED, "error:schema", clean(item["query"]), ""))
            continue
        query, answer = clean(item.get("query")), clean(item.get("answer", ""))
        key = query.casefold().rstrip("?!. ")
        if not key:
            out.append((FILTERED, "filter:empty_query", query, answer))
        elif not answer:
            out.append((FILTERED, "filter:empty_answer", query, answer))
        elif key in seen:
            out.append((FILTERED, "filter:duplicate_query", query, answer))
        elif query.casefold() == passage_key or (len(key) > 40 and key in passage_key):
            out.append((FILTERED, "filter:query_copies_passage", query, answer))
        elif is_copy(query, copied) or (is_copy(answer, copied) and not contains(passage, answer)):
            out.append((FILTERED, COPIED_EXAMPLE, query, answer))
        else:
            seen.add(key)
            out.append((OK, "", query, answer))
    return out


def prompt_batch(table: pa.Table, sources: dict[str, str], cfg: dict) -> pa.Table:
    """Ray Data task: add `_messages` (JSON) to every passage row."""
    config = Doc2QueryConfig.from_dict(cfg)
    titles, texts = table["title"].to_pylist(), table["text"].to_pylist()
    msgs = [json.dumps(build_messages(sources, config, t, x), ensure_ascii=False) for t, x in zip(titles, texts)]
    shown = shown_examples(sources, config)  # parsed once per block, not once per row
    keys = [json.dumps(foreign_keys(shown, t, x), ensure_ascii=False) for t, x in zip(titles, texts)]
    table = table.append_column(COPY_COL, pa.array(keys, pa.string()))
    return table.append_column(MESSAGES, pa.array(msgs, pa.string()))


def explode_batch(table: pa.Table, cfg: dict) -> pa.Table:
    """Ray Data task: one passage row -> N query-slot rows with status and reason."""
    config = Doc2QueryConfig.from_dict(cfg)
    n = config.queries_per_passage
    base = table.drop_columns([c for c in (MESSAGES, RAW, LLM_ERROR, COPY_COL) if c in table.column_names])
    raws, errors, texts = table[RAW].to_pylist(), table[LLM_ERROR].to_pylist(), table["text"].to_pylist()
    copied = [frozenset(json.loads(k)) for k in table[COPY_COL].to_pylist()]
    take, cols = [], {k: [] for k in ("id", "query", "answer", "query_index", "llm_raw", SLOT)}
    statuses, reasons = [], []
    doc_ids = table["doc_id"].to_pylist()
    for i, (raw, err, text) in enumerate(zip(raws, errors, texts)):
        for k, (status, reason, query, answer) in enumerate(parse_pairs(raw, err, n, text, copied[i])):
            take.append(i)
            for key, value in zip(cols, (f"{doc_ids[i]}-q{k}", query, answer, k, raw, k)):
                cols[key].append(value)
            statuses.append(status)
            reasons.append(reason)
    out = base.drop_columns([c for c in ("id", STATUS, REASON) if c in base.column_names]).take(pa.array(take, pa.int64()))
    for key, values in cols.items():
        out = out.append_column(key, pa.array(values, pa.int32() if key in ("query_index", SLOT) else pa.string()))
    return set_status(out, statuses, reasons)



class Doc2Query(LLMStage):
    name: ClassVar[str] = "doc2query"
    config_cls: ClassVar[type] = Doc2QueryConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id", "doc_id", "text", "title")
    output_columns: ClassVar[tuple[str, ...]] = ("id", "doc_id", "query", "answer", "query_index", "llm_raw")
    prompt_files: ClassVar[tuple[str, ...]] = PROMPTS
    render_batch = staticmethod(prompt_batch)
    parse_batch = staticmethod(explode_batch)

    @property
    def fanout(self) -> int:
        return self.config.queries_per_passage

    def check_prompts(self) -> None:
        build_messages(self.sources, self.config, "Title", "A passage. " * 20)

    def schema(self) -> dict:
        return output_schema(self.config)

    @staticmethod
    def render_row(prompts_dir: Path, cfg: Doc2QueryConfig, row: dict) -> list[dict]:
        return build_messages(load_sources(prompts_dir, PROMPTS), cfg, row.get("title"), row["text"])
