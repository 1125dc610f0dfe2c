"""instruct: an LLM turns a pair's relation text into retrieval instructions (DESIGN §1b step 4).

Per row the LLM reads the `describe` text (a VLM description, or the captions text in captions mode)
and writes `min_instructions`..`max_instructions` short instructions as JSON `{"instructions": [...]}`
under a grammar (maxItems / maxLength, so even a tiny random model closes the JSON), preceded by
`demos_per_row` demonstrations drawn per row from prompts/megapairs/demos.yaml with `seed` and the row
id (their ids recorded in `demo_ids`). Instructions refer to what both images share only vaguely and
spell out what only the target has (prompts/megapairs/instruct_*.j2).

Near-duplicates collapse: two instructions are the same when their normalised texts (case-folded,
punctuation dropped, "a" / "an" / "the" dropped) are equal or the Jaccard overlap of their word sets
is at least `near_duplicate_jaccard` (0.8); the first is kept. An instruction that is, by the same
rule, one of the row's demonstrations' instructions is dropped (the model copied it).

Input columns: id, description, description_mode. Output: every input column plus instructions
(list<string>), demo_ids (list<string>), instruct_raw (the model's raw text). Dropped rows:
`filter:too_few_instructions` (fewer than `min_instructions` left), `filter:empty_description`,
`error:invalid_json`, `error:schema`, and the backends' reasons (`error:truncated_output`,
`error:prompt_too_long`, `error:timeout`, ...).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pyarrow as pa

from pipeline.config import check
from pipeline.errors import PipelineConfigError
from pipeline.llmstage import LLMStage
from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW, LLMConfig
from pipeline.prompts import load_examples, load_sources, render
from pipeline.stage import FILTERED, OK, REJECTED, Resources, StageConfig, set_status
from pipeline.stages.describe import PROMPTS as DESCRIBE_PROMPTS
from pipeline.stages.describe import caption_text, clean, row_hash

PROMPTS = (
    "megapairs/instruct_system.j2", "megapairs/instruct_user.j2", "megapairs/demos.yaml", DESCRIBE_PROMPTS[2],
)
# Internal: the drawn demonstrations' instructions, for the copy check after generation.
DEMO_TEXT = "_demo_instructions"
_STOP = frozenset({"a", "an", "the"})
_NON_WORD = re.compile(r"[^\w]+")


@dataclass(frozen=True)
class InstructConfig(StageConfig):
    llm: LLMConfig = dataclasses.field(default_factory=lambda: LLMConfig(max_new_tokens=384))
    min_instructions: int = 3
    max_instructions: int = 5
    max_instruction_chars: int = 120
    demos_per_row: int = 5
    near_duplicate_jaccard: float = 0.8
    # The relation text is cut to this many characters inside the prompt (the row keeps it whole).
    description_max_chars: int = 2000
    seed: int = 0
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(batch_size=8, shard_rows=32))

    def __post_init__(self) -> None:
        check(1 <= self.min_instructions <= 20, "instruct", "min_instructions",
              f"must be in 1..20 (got {self.min_instructions})")
        check(self.min_instructions <= self.max_instructions <= 20, "instruct", "max_instructions",
              f"must be in min_instructions..20 (got {self.max_instructions})")
        check(self.max_instruction_chars >= 10, "instruct", "max_instruction_chars", "must be >= 10")
        check(self.demos_per_row >= 0, "instruct", "demos_per_row", f"must be >= 0 (got {self.demos_per_row})")
        check(0 < self.near_duplicate_jaccard <= 1, "instruct", "near_duplicate_jaccard",
              f"must be in (0, 1] (got {self.near_duplicate_jaccard})")
        check(self.description_max_chars >= 100, "instruct", "description_max_chars", "must be >= 100")


def output_schema(cfg: InstructConfig) -> dict:
    item = {"type": "string", "minLength": 1, "maxLength": cfg.max_instruction_chars}
    items = {"type": "array", "items": item, "minItems": cfg.min_instructions, "maxItems": cfg.max_instructions}
    return {
        "type": "object", "properties": {"instructions": items}, "required": ["instructions"],
        "additionalProperties": False,
    }


def load_demos(sources: dict[str, str], need: int) -> list[dict]:
    """The demonstration pool, checked: unique ids, a description, both captions, >= 3 instructions.

    Raises:
        PipelineConfigError: a malformed entry, or fewer entries than `need`.
    """
    name = PROMPTS[2]
    demos, seen = load_examples(sources[name], name), set()
    for i, d in enumerate(demos):
        ok = (isinstance(d.get("id"), str) and d["id"] not in seen and isinstance(d.get("description"), str)
              and all(isinstance(d.get(k), str) for k in ("source_caption", "target_caption"))
              and isinstance(d.get("instructions"), list) and len(d["instructions"]) >= 3
              and all(isinstance(x, str) and x.strip() for x in d["instructions"]))
        if not ok:
            raise PipelineConfigError(
                f"prompts: {name} entry {i} ({d.get('id')!r}) needs a unique string id, description, "
                "source_caption, target_caption and a list of >= 3 non-empty instructions"
            )
        seen.add(d["id"])
    if len(demos) < need:
        raise PipelineConfigError(f"prompts: {name} has {len(demos)} demonstrations; demos_per_row asks for {need}")
    return demos


def draw_demos(n_pool: int, k: int, seed: int, row_id: str) -> list[int]:
    """k distinct pool positions for one row: the pool ordered by a per-(row, entry) hash, first k."""
    return sorted(range(n_pool), key=lambda i: (row_hash(seed, f"{row_id}\x00demo{i}"), i))[:k]


def build_messages(
    sources: dict[str, str], demos: list[dict], cfg: InstructConfig, description: str, mode: str
) -> list[dict]:
    system, user = PROMPTS[0], PROMPTS[1]
    lo, hi = cfg.min_instructions, cfg.max_instructions
    messages = [{"role": "system", "content": render(
        sources[system], system, n_min=lo, n_max=hi, max_chars=cfg.max_instruction_chars)}]
    for d in demos:
        text = d["description"] if mode == "vlm" else caption_text(sources, d["source_caption"], d["target_caption"], [])
        messages.append({"role": "user", "content": render(
            sources[user], user, description=text, description_mode=mode, n_min=lo, n_max=hi)})
        answer = {"instructions": list(d["instructions"])[:hi]}
        messages.append({"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)})
    messages.append({"role": "user", "content": render(
        sources[user], user, description=description[: cfg.description_max_chars], description_mode=mode,
        n_min=lo, n_max=hi)})
    return messages


def words(text: str) -> frozenset[str]:
    return frozenset(w for w in _NON_WORD.sub(" ", text.casefold()).split() if w not in _STOP)


def same_instruction(a: frozenset[str], b: frozenset[str], jaccard: float) -> bool:
    """Near-duplicates: equal normalised word sets, or Jaccard overlap >= `jaccard`."""
    if a == b:
        return True
    return bool(a | b) and len(a & b) / len(a | b) >= jaccard


def parse_instructions(
    raw: str | None, llm_error: str, cfg: InstructConfig, demo_instructions: list[str]
) -> tuple[str, str, list[str]]:
    """(status, reason, kept instructions) for one row's LLM answer."""
    if llm_error:
        return REJECTED, llm_error, []
    try:
        # strict=False: constrained decoding can emit raw control characters inside strings.
        obj = json.loads(raw, strict=False)
    except (json.JSONDecodeError, TypeError):
        return REJECTED, "error:invalid_json", []
    # A bare list is taken too (a model without a grammar may answer with one).
    items = obj.get("instructions") if isinstance(obj, dict) else obj
    if not isinstance(items, list):
        return REJECTED, "error:schema", []
    copied = [words(x) for x in demo_instructions]
    kept, keys = [], []
    for item in items:
        text = clean(item)
        key = words(text)
        if not key or any(same_instruction(key, c, cfg.near_duplicate_jaccard) for c in copied):
            continue
        if any(same_instruction(key, k, cfg.near_duplicate_jaccard) for k in keys):
            continue
        kept.append(text)
        keys.append(key)
    kept = kept[: cfg.max_instructions]
    if len(kept) < cfg.min_instructions:
        return FILTERED, "filter:too_few_instructions", kept
    return OK, "", kept


def prompt_batch(table: pa.Table, sources: dict[str, str], cfg: dict) -> pa.Table:
    """Ray Data task: add `_messages` (null for an empty description), `demo_ids` and `_demo_instructions`."""
    config = InstructConfig.from_dict(cfg)
    pool = load_demos(sources, config.demos_per_row)
    msgs, ids, demo_text = [], [], []
    modes = table["description_mode"].to_pylist()
    for row_id, text, mode in zip(table["id"].to_pylist(), table["description"].to_pylist(), modes):
        demos = [pool[i] for i in draw_demos(len(pool), config.demos_per_row, config.seed, row_id)]
        ids.append([d["id"] for d in demos])
        demo_text.append([x for d in demos for x in d["instructions"]])
        text = clean(text)
        msgs.append(json.dumps(build_messages(sources, demos, config, text, mode or "vlm"), ensure_ascii=False)
                    if text else None)
    table = table.append_column("demo_ids", pa.array(ids, pa.list_(pa.string())))
    table = table.append_column(DEMO_TEXT, pa.array(demo_text, pa.list_(pa.string())))
    return table.append_column(MESSAGES, pa.array(msgs, pa.string()))


def parse_batch(table: pa.Table, cfg: dict) -> pa.Table:
    """Ray Data task: `_raw` -> instructions, status and reason; internal columns dropped."""
    config = InstructConfig.from_dict(cfg)
    decided = []
    for raw, err, msg, demo_text in zip(table[RAW].to_pylist(), table[LLM_ERROR].to_pylist(),
                                        table[MESSAGES].to_pylist(), table[DEMO_TEXT].to_pylist()):
        if msg is None:
            decided.append((FILTERED, "filter:empty_description", []))
        else:
            decided.append(parse_instructions(raw, err, config, demo_text))
    raws = table[RAW].to_pylist()
    table = table.drop_columns([c for c in (MESSAGES, RAW, LLM_ERROR, DEMO_TEXT) if c in table.column_names])
    table = table.append_column("instructions", pa.array([d[2] for d in decided], pa.list_(pa.string())))
    table = table.append_column("instruct_raw", pa.array(raws, pa.string()))
    return set_status(table, [d[0] for d in decided], [d[1] for d in decided])


class Instruct(LLMStage):
    name: ClassVar[str] = "instruct"
    config_cls: ClassVar[type] = InstructConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id", "description", "description_mode")
    output_columns: ClassVar[tuple[str, ...]] = ("instructions", "demo_ids", "instruct_raw")
    prompt_files: ClassVar[tuple[str, ...]] = PROMPTS
    render_batch = staticmethod(prompt_batch)
    parse_batch = staticmethod(parse_batch)

    def check_prompts(self) -> None:
        demos = load_demos(self.sources, self.config.demos_per_row)[: self.config.demos_per_row]
        for mode in ("vlm", "captions"):
            build_messages(self.sources, demos, self.config, "Both images show a dog. " * 5, mode)

    def schema(self) -> dict:
        return output_schema(self.config)

    @staticmethod
    def render_row(prompts_dir: Path, cfg: InstructConfig, row: dict) -> list[dict]:
        sources = load_sources(prompts_dir, PROMPTS)
        pool = load_demos(sources, cfg.demos_per_row)
        demos = [pool[i] for i in draw_demos(len(pool), cfg.demos_per_row, cfg.seed, str(row["id"]))]
        mode = row.get("description_mode") or "vlm"
        return build_messages(sources, demos, cfg, clean(row["description"]), mode)
