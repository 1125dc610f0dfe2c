"""describe: the relation text of a MegaPairs pair (DESIGN §1b step 3), by a VLM or from the captions.

`mode: vlm`: a VLM sees the Source Image then the Target Image, labelled (prompts/megapairs/
describe_*.j2), and writes one paragraph "Both images ... However, the Source Image ..., whereas the
Target Image ..." in fewer than N words, N drawn per row in [min_words, max_words] from `seed` and the
row id (recorded as `word_limit`). Backends transformers / vllm / openai (models/vlm.py), two image
parts per prompt; images load inside the worker from the run's image store. `mode: captions` (the
default, no model): prompts/megapairs/captions.j2 renders the two captions and the pair's views, which
the `instruct` LLM then reads in place of a description.

Input columns: id, query_image, query_caption, target_image, target_caption, pair_views. Output: every
input column plus description (string), word_limit (int32, null in captions mode), description_mode
(`vlm` | `captions`), describe_raw (the VLM's raw text; null in captions mode). Dropped rows:
`filter:empty_description`, `filter:off_template` (with `require_template`), `filter:no_caption`
(captions mode, both captions missing), `error:no_query_image`, `error:no_target_image`,
`error:image_<kind>` (io/images.fit_image: `truncated`, `not_an_image`, `aspect_ratio`, ...), and the backends' reasons (`error:truncated_output`, `error:prompt_too_long`,
`error:timeout`, `error:inference_failed`, `error:http_<status>`, ...).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa

from pipeline.config import check, to_dict
from pipeline.errors import PipelineConfigError
from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW, LLMConfig
from pipeline.prompts import load_sources, render
from pipeline.scheduling import Phase
from pipeline.stage import (
    FILTERED,
    OK,
    REJECTED,
    BlockStep,
    Resources,
    Stage,
    StageConfig,
    glue_map,
    set_status,
)

PROMPTS = ("megapairs/describe_system.j2", "megapairs/describe_user.j2", "megapairs/captions.j2")
# What the user template's `source_image` / `target_image` render to; the stage puts the image there.
MARKS = {"source": "\x1fSOURCE_IMAGE\x1f", "target": "\x1fTARGET_IMAGE\x1f"}
IMAGE_COLUMNS = {"source": "query_image", "target": "target_image"}
IMAGE_ERROR = "_image_error"
# "Both images ..." opening the text (a short lead-in allowed), then "However", then "whereas".
_SHAPE = re.compile(r"^\W*(?:\w+\W+){0,3}?both images\b.*?\bhowever\b.*?\bwhereas\b", re.IGNORECASE | re.DOTALL)
_CTRL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class DescribeConfig(StageConfig):
    mode: Literal["vlm", "captions"] = "captions"
    # The VLM (mode vlm): the LLM backends' config; `model` a Qwen2-VL class checkpoint.
    vlm: LLMConfig = dataclasses.field(default_factory=lambda: LLMConfig(model="tiny:qwen2_vl", max_new_tokens=200))
    # The word limit N of each row's description is drawn uniformly in [min_words, max_words].
    min_words: int = 60
    max_words: int = 100
    # mode vlm: drop descriptions without the "Both images ... However ... whereas ..." shape.
    require_template: bool = True
    # mode vlm: images are shrunk to this longer side before they go to the VLM (the released
    # MegaPairs data is 512 x 512); it bounds the prompt's image tokens on every backend.
    max_image_side: int = 768
    seed: int = 0
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(batch_size=4, shard_rows=32))

    def __post_init__(self) -> None:
        check(self.mode in ("vlm", "captions"), "describe", "mode", f"must be vlm or captions (got {self.mode!r})")
        check(self.min_words >= 1, "describe", "min_words", f"must be >= 1 (got {self.min_words})")
        check(self.max_image_side >= 28, "describe", "max_image_side", f"must be >= 28 (got {self.max_image_side})")
        check(self.max_words >= self.min_words, "describe", "max_words",
              f"must be >= min_words (got {self.max_words} < {self.min_words})")

    def semantic_dict(self) -> dict:
        values = super().semantic_dict()
        if self.mode == "captions":
            # No model runs: the VLM's knobs do not change the output, so they do not redo the stage.
            for key in ("vlm", "min_words", "max_words", "require_template", "max_image_side", "seed"):
                values.pop(key)
        return values


def row_hash(seed: int, key: str) -> int:
    """A 64-bit draw for `key` (a row id, ...) under `seed`: the same on every run, node, retry, batch
    and Python version (no RNG state involved)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest(), "big")


def draw_word_limit(seed: int, row_id: str, lo: int, hi: int) -> int:
    """N in [lo, hi] for one row."""
    return lo + row_hash(seed, row_id) % (hi - lo + 1)


def build_messages(sources: dict[str, str], word_limit: int) -> list[dict]:
    """System and user messages; the user content is text parts with `{"type": "image", "image":
    "source" | "target"}` where the template put each image.

    Raises:
        PipelineConfigError: the user template does not place each image exactly once, source first.
    """
    system, user = PROMPTS[0], PROMPTS[1]
    text = render(sources[user], user, source_image=MARKS["source"], target_image=MARKS["target"], word_limit=word_limit)
    if re.findall("|".join(MARKS.values()), text) != [MARKS["source"], MARKS["target"]]:
        raise PipelineConfigError(
            f"prompts: {user} must place {{{{ source_image }}}} and then {{{{ target_image }}}} exactly once each"
        )
    parts: list[dict] = []
    for piece in re.split(f"({'|'.join(MARKS.values())})", text):
        which = next((k for k, m in MARKS.items() if m == piece), None)
        if which is not None:
            parts.append({"type": "image", "image": which})
        elif piece.strip():
            parts.append({"type": "text", "text": piece.strip()})
    return [
        {"role": "system", "content": render(sources[system], system, word_limit=word_limit)},
        {"role": "user", "content": parts},
    ]


def with_images(messages: list[dict], urls: dict[str, str]) -> list[dict]:
    """The messages with each image placeholder replaced by an OpenAI-style data-URL image part."""
    out = []
    for m in messages:
        if isinstance(m["content"], list):
            m = {**m, "content": [
                {"type": "image_url", "image_url": {"url": urls[p["image"]]}} if p["type"] == "image" else p
                for p in m["content"]
            ]}
        out.append(m)
    return out


def clean(text: Any) -> str:
    return " ".join(_CTRL.sub(" ", text).split()) if isinstance(text, str) else ""


def parse_description(raw: str | None, llm_error: str, require_template: bool) -> tuple[str, str, str]:
    """(status, reason, description) for one VLM answer."""
    if llm_error:
        return REJECTED, llm_error, ""
    text = clean(raw).strip("\"'` ")
    if not text:
        return FILTERED, "filter:empty_description", ""
    if require_template and not _SHAPE.search(text):
        return FILTERED, "filter:off_template", text
    return OK, "", text


def caption_text(sources: dict[str, str], source_caption: Any, target_caption: Any, views: Any) -> str:
    name = PROMPTS[2]
    return render(sources[name], name, source_caption=clean(source_caption) or None,
                  target_caption=clean(target_caption) or None, views=list(views or []))


class ImageLoader:
    """Image references -> data URLs of the images fitted to `max_side` (the one image loader,
    io/images.fit_image), or the reason a row cannot have its image."""

    def __init__(self, run_uri: str, max_side: int) -> None:
        from pipeline.io.image_store import ImageStore

        self.store, self.max_side = ImageStore.from_uri(run_uri), max_side

    def url(self, ref: dict | None, missing: str) -> tuple[str, str]:
        from pipeline.io.images import ImageError, ImageLimits, fit_image
        from pipeline.models.vllm_vision import data_url

        if ref is None:
            return "", missing
        # A failing read is a system failure (R35): it propagates and the shard is redone.
        data = self.store.get(ref)
        try:
            # Qwen2-VL's processor refuses images longer than 200:1.
            return data_url(fit_image(data, ImageLimits(), self.max_side, 200.0).data), ""
        except ImageError as exc:
            return "", f"error:image_{exc.kind}"


def prompt_batch(table: pa.Table, sources: dict[str, str], cfg: dict, run_uri: str) -> pa.Table:
    """Glue task (mode vlm): add `word_limit`, `_messages` (images as data URLs; null when an image
    is missing or unreadable) and `_image_error`."""
    config = DescribeConfig.from_dict(cfg)
    loader = ImageLoader(run_uri, config.max_image_side)
    limits, messages, errors = [], [], []
    refs = {k: table[c].to_pylist() for k, c in IMAGE_COLUMNS.items()}
    for i, row_id in enumerate(table["id"].to_pylist()):
        n = draw_word_limit(config.seed, row_id, config.min_words, config.max_words)
        limits.append(n)
        urls, error = {}, ""
        for which in ("source", "target"):
            missing = "error:no_query_image" if which == "source" else "error:no_target_image"
            urls[which], reason = loader.url(refs[which][i], missing)
            error = error or reason
        errors.append(error)
        messages.append(None if error else json.dumps(with_images(build_messages(sources, n), urls)))
    table = table.append_column("word_limit", pa.array(limits, pa.int32()))
    table = table.append_column(MESSAGES, pa.array(messages, pa.string()))
    return table.append_column(IMAGE_ERROR, pa.array(errors, pa.string()))


def parse_batch(table: pa.Table, cfg: dict) -> pa.Table:
    """Glue task (mode vlm): `_raw` -> description, status and reason; internal columns dropped."""
    config = DescribeConfig.from_dict(cfg)
    raws = table[RAW].to_pylist()
    decided = [
        (REJECTED, image_error, "") if image_error else parse_description(raw, err, config.require_template)
        for raw, err, image_error in zip(raws, table[LLM_ERROR].to_pylist(), table[IMAGE_ERROR].to_pylist())
    ]
    n = table.num_rows
    table = table.drop_columns([c for c in (MESSAGES, RAW, LLM_ERROR, IMAGE_ERROR) if c in table.column_names])
    table = table.append_column("description", pa.array([d[2] for d in decided], pa.string()))
    table = table.append_column("description_mode", pa.array(["vlm"] * n, pa.string()))
    table = table.append_column("describe_raw", pa.array(raws, pa.string()))
    return set_status(table, [d[0] for d in decided], [d[1] for d in decided])


def captions_batch(table: pa.Table, sources: dict[str, str]) -> pa.Table:
    """Task step (mode captions): the description rendered from the captions; no model call."""
    n = table.num_rows
    src, tgt = table["query_caption"].to_pylist(), table["target_caption"].to_pylist()
    views = table["pair_views"].to_pylist()
    texts, statuses, reasons = [], [], []
    for s, t, v in zip(src, tgt, views):
        if not clean(s) and not clean(t):
            texts.append("")
            statuses.append(FILTERED)
            reasons.append("filter:no_caption")
        else:
            texts.append(caption_text(sources, s, t, v))
            statuses.append(OK)
            reasons.append("")
    table = table.append_column("description", pa.array(texts, pa.string()))
    table = table.append_column("word_limit", pa.nulls(n, pa.int32()))
    table = table.append_column("description_mode", pa.array(["captions"] * n, pa.string()))
    table = table.append_column("describe_raw", pa.nulls(n, pa.string()))
    return set_status(table, statuses, reasons)


class Describe(Stage):
    name: ClassVar[str] = "describe"
    config_cls: ClassVar[type] = DescribeConfig
    input_columns: ClassVar[tuple[str, ...]] = (
        "id", "query_image", "query_caption", "target_image", "target_caption", "pair_views",
    )
    output_columns: ClassVar[tuple[str, ...]] = ("description", "word_limit", "description_mode", "describe_raw")
    prompt_files: ClassVar[tuple[str, ...]] = PROMPTS

    def prepare(self) -> None:
        from pipeline.models.sources import resolve_model

        self.sources = load_sources(self.context.prompts_dir, self.prompt_files)
        # Render once on the driver: a template variable the stage lacks fails before any work.
        build_messages(self.sources, self.config.max_words)
        caption_text(self.sources, "a caption", None, ["clip_image"])
        self.model_path = self.model_id = None
        if self.config.mode == "vlm":
            vlm = self.config.vlm
            self.model_path, self.model_id = resolve_model(vlm.model, self.context.cache_dir, vlm.fallback_model, f"{self.name}.vlm")

    def models(self) -> dict[str, str]:
        return {"vlm": f"{self.model_id} via {self.config.vlm.backend}"} if self.config.mode == "vlm" else {}

    def schedule(self) -> tuple[Phase, ...]:
        """`captions`: the shard task; `vlm`: the VLM backend's pools."""
        if self.config.mode == "captions":
            return super().schedule()
        from pipeline.models.llm import llm_pools

        cfg = self.config
        return (Phase(self.name, llm_pools(cfg.vlm, cfg.resources, self.name, f"{self.name}.vlm", multimodal=True)),)

    def task_steps(self) -> list[BlockStep] | None:
        if self.config.mode == "captions":
            return [BlockStep(captions_batch, {"sources": self.sources})]
        return None

    def apply(self, ds: Any) -> Any:
        if self.config.mode == "captions":
            return super().apply(ds)
        from pipeline.models.vlm import generate_text_with_images

        cfg = to_dict(self.config)
        ds = glue_map(ds, prompt_batch, fn_kwargs={"sources": self.sources, "cfg": cfg, "run_uri": self.context.run_uri})
        ds = generate_text_with_images(ds, self.config.vlm, self.model_path, self.config.resources, self.name, 2)
        return glue_map(ds, parse_batch, fn_kwargs={"cfg": cfg})

    @staticmethod
    def render_row(prompts_dir: Path, cfg: DescribeConfig, row: dict) -> list[dict]:
        """The VLM messages (whatever `mode` says), each image shown as `[image: <column> <sha256 prefix>]`."""
        n = draw_word_limit(cfg.seed, str(row["id"]), cfg.min_words, cfg.max_words)
        messages = build_messages(load_sources(prompts_dir, PROMPTS), n)

        def show(part: dict) -> str:
            if part["type"] == "text":
                return part["text"]
            column = IMAGE_COLUMNS[part["image"]]
            ref = row.get(column)
            sha = ref.get("sha256") if isinstance(ref, dict) else None
            return f"[image: {column} {str(sha)[:16] if sha else '(none)'}]"

        return [m if isinstance(m["content"], str) else {**m, "content": "\n".join(show(p) for p in m["content"])}
                for m in messages]
