"""images: give every query an image of its entity, trying sources in the configured order (GME §1a row 5).

Sources (`images.sources`, tried in order until one gives an image):
- `doc`: the passage's own image; else its `image_url`, fetched by the safe fetcher (io/fetch.py). Only
  when the entity names the passage's subject (its title; `doc_subject_only`, on by default).
- `retrieval`: the top pool images for the entity text (prompts/images/retrieval_query.j2), by the
  open_clip text tower over the pool's image vectors (`retriever: clip`) or by a sentence-transformers
  model over the pool's captions (`retriever: caption`, the consistency stage's embedder by default).
  The pool (io/image_pool.py) is a declared index the runner builds once per pool and model
  (`_index/image-<key>/`, or a shared `index_dir`; `fusegen index-images` builds it ahead). With
  `retrieval.top_k` > 1 a row fans out into up to k rows, one per image (ids `<id>-i<k>`).
- `generation`: a text-to-image prompt, written by the LLM from the entity and passage (`describe:
  llm`, JSON `{"description"}`, prompts/images/describe_*.j2) or rendered from a template (`describe:
  template`, prompts/images/describe.j2), drawn by a diffusers pipeline with a per-row seed.

Input columns: id, doc_id, text, title, image, image_url, entity, entity_type, rewritten_query.
Output: every input column plus `query_image` (image reference), `image_source` (doc | retrieved |
generated), `image_origin` (URL, `doc:<doc_id>`, `pool:<pool id>` or `<model>`), `image_license`,
`image_score` (retrieval similarity), `image_rank` (retrieval rank, 1-based), `image_prompt`,
`image_seed`, `image_model` (generation), and `image_attempts` (list of {source, reason}: each source
tried before the one that gave the image, or all of them). Dropped rows: `filter:no_image` (no
source gave an image; the attempts say why). A failing diffusion pipeline (OOM included) fails the shard
for resume; it is never a row's verdict.
Attempt reasons: `doc:no_image`, `doc:not_the_entity` (the passage's title does not name the entity:
its image would not show it; `doc_subject_only`), `error:fetch_<kind>`, `error:image_<kind>`, `retrieval:no_pool`,
`retrieval:empty_pool`, `retrieval:below_min_score`, `retrieval:empty_query`, and the LLM's
`error:invalid_json` / `error:schema` / `error:truncated_output` / `error:timeout`... for descriptions.

The configuration and output columns are in stages/images_config.py, the pool index (its embed side
stage and the pool as an actor opens it) in stages/images_pool.py.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipeline.columns import set_column
from pipeline.config import to_dict
from pipeline.io.image_pool import pool_identity
from pipeline.io.image_store import ImageStore
from pipeline.io.indexes import IndexHandle, IndexSpec
from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW
from pipeline.prompts import load_sources, render
from pipeline.scheduling import Phase
from pipeline.stage import (
    FILTERED,
    NROWS,
    OK,
    SLOT,
    Stage,
    actor_map,
    actor_pool,
    glue_map,
    set_status,
)
from pipeline.stages.images_config import (
    ATTEMPT,
    GEN,
    OUT_FIELDS,
    PROMPTS,
    SOURCES,
    GenerationConfig,
    ImagesConfig,
    RetrievalConfig,
)
from pipeline.stages.images_pool import ImagePool, OpenImagePool, PoolVectorsFn, pool_spec, retriever_model
from pipeline.text.leak import same_subject

# Names the images stage's callers import from here (its config and pool index live beside it).
__all__ = ["ATTEMPT", "GEN", "OUT_FIELDS", "PROMPTS", "SOURCES", "DrawFn", "GenerationConfig", "Images",
           "ImagesConfig", "ImagesFn", "PoolVectorsFn", "RetrievalConfig", "choose_retrieved",
           "describe_messages", "parse_description", "row_seed"]

# `doc` attempt reason: the passage's title does not name the entity (its image would not show it).
DOC_NOT_THE_ENTITY = "doc:not_the_entity"


# --- pure per-row logic ---------------------------------------------------------------------------


def choose_retrieved(hits: list[tuple[int, float]], shas: list[str | None], top_k: int,
                     min_score: float | None) -> tuple[list[tuple[int, float, int]], str]:
    """(chosen (pool row, score, rank), failure reason) from one query's hits, best first.

    Exact duplicates (same stored image) count once; hits under `min_score` are not taken.
    """
    if not hits:
        return [], "retrieval:empty_pool"
    chosen, seen = [], set()
    for rank, ((row, score), sha) in enumerate(zip(hits, shas), start=1):
        if min_score is not None and score < min_score:
            continue
        if sha is None or sha in seen:
            continue
        seen.add(sha)
        chosen.append((row, score, rank))
        if len(chosen) == top_k:
            break
    return chosen, "" if chosen else "retrieval:below_min_score"


def parse_description(raw: str, llm_error: str, max_chars: int) -> tuple[str, str]:
    """(description, reason) from the LLM's JSON answer."""
    if llm_error:
        return "", llm_error
    try:
        obj = json.loads(raw, strict=False)
    except (json.JSONDecodeError, TypeError):
        return "", "error:invalid_json"
    text = obj.get("description") if isinstance(obj, dict) else None
    if not isinstance(text, str):
        return "", "error:schema"
    text = " ".join(text.split())[:max_chars]
    return (text, "") if text else ("", "filter:empty_description")


def row_seed(base: int, row_id: str) -> int:
    """A row's generation seed: stable across runs, retries and batch composition."""
    return (base + int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16)) % 2**31


def describe_messages(sources: dict[str, str], cfg: GenerationConfig, row: dict) -> list[dict]:
    system, user = PROMPTS[2], PROMPTS[3]
    return [
        {"role": "system", "content": render(sources[system], system, max_chars=cfg.max_description_chars)},
        {"role": "user", "content": render(sources[user], user, entity=row["entity"], entity_type=row["entity_type"],
                                           title=row.get("title"), passage=(row.get("text") or "")[: cfg.passage_max_chars])},
    ]


# --- the stage's actors -----------------------------------------------------------------------------


class ImagesFn:
    """Ray actor: tries `doc` and `retrieval` (in the configured order) for every row of a shard; rows
    that reach `generation` leave with `_gen` set (and `_messages` for the LLM with `describe: llm`)."""

    def __init__(self, cfg: dict, sources: dict, run_uri: str, index: IndexHandle | None, retriever: str | None) -> None:
        self.cfg = ImagesConfig.from_dict(cfg)
        self.sources = sources
        self.store = ImageStore.from_uri(run_uri)
        self.index = index
        self.retriever_path = retriever
        self._fetcher = None
        self._retriever = None
        self._pool = None

    # Lazily built: a shard whose rows all have their own image loads no model.
    def fetcher(self):
        if self._fetcher is None:
            from pipeline.io.fetch import Fetcher

            self._fetcher = Fetcher(self.cfg.fetch)
        return self._fetcher

    def pool(self):
        if self._pool is None:
            self._pool = OpenImagePool(self.index)
        return self._pool

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        if self._retriever is None:
            if self.cfg.retrieval.retriever == "clip":
                from pipeline.models.clip import ClipModel

                self._retriever = ClipModel(self.retriever_path, self.cfg.clip)
            else:
                from pipeline.models.text_embed import TextEmbedder

                self._retriever = TextEmbedder(self.retriever_path, self.cfg.embedder)
        if self.cfg.retrieval.retriever == "clip":
            return self._retriever.encode_texts(texts)
        prefix = self.cfg.embedder.query_prefix
        return self._retriever.encode([prefix + t for t in texts], self.cfg.resources.batch_size)

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        found: list[list[dict]] = [[] for _ in rows]
        attempts: list[list[dict]] = [[] for _ in rows]
        for source in self.cfg.sources:
            todo = [i for i in range(len(rows)) if not found[i]]
            if not todo:
                break
            if source == "doc":
                for i in todo:
                    found[i], reason = self.from_doc(rows[i])
                    if reason:
                        attempts[i].append({"source": "doc", "reason": reason})
            elif source == "retrieval":
                for i, (images, reason) in zip(todo, self.retrieve([rows[i] for i in todo])):
                    found[i] = images
                    if reason:
                        attempts[i].append({"source": "retrieval", "reason": reason})
            else:
                for i in todo:
                    found[i] = [self.generation_request(rows[i])]
                break
        return self.explode(table, rows, found, attempts)

    def from_doc(self, row: dict) -> tuple[list[dict], str]:
        if self.cfg.doc_subject_only and not same_subject(row.get("title"), row.get("entity")):
            return [], DOC_NOT_THE_ENTITY
        if row.get("image"):
            origin = row.get("image_url") or f"doc:{row.get('doc_id')}"
            return [{"query_image": row["image"], "image_source": "doc", "image_origin": origin}], ""
        url = row.get("image_url")
        if not url:
            return [], "doc:no_image"
        from pipeline.io.fetch import store_fetched

        result = self.fetcher().fetch(url)
        if not result.ok:
            return [], result.error
        ref = store_fetched(result, self.store)
        return [{"query_image": ref, "image_source": "doc", "image_origin": result.url}], ""

    def retrieve(self, rows: list[dict]) -> list[tuple[list[dict], str]]:
        r = self.cfg.retrieval
        if self.index is None:
            return [([], "retrieval:no_pool")] * len(rows)
        if self.index.count == 0:
            return [([], "retrieval:empty_pool")] * len(rows)
        texts = [render(self.sources[PROMPTS[0]], PROMPTS[0], entity=row.get("entity") or "",
                        entity_type=row.get("entity_type") or "", query=row.get("rewritten_query") or "",
                        title=row.get("title")) for row in rows]
        asked = [i for i, t in enumerate(texts) if t.strip()]
        out: list[tuple[list[dict], str]] = [([], "retrieval:empty_query")] * len(rows)
        if not asked:
            return out
        pool = self.pool()
        vectors = self.encode_queries([texts[i] for i in asked])
        scores, hits = pool.index.search(vectors, r.search_k, r.index.nprobe)
        pool.load(hits[hits >= 0])
        for j, i in enumerate(asked):
            pairs = [(int(h), float(s)) for h, s in zip(hits[j], scores[j]) if h >= 0]
            chosen, reason = choose_retrieved(pairs, [pool.sha(h) for h, _ in pairs], r.top_k, r.min_score)
            out[i] = ([pool.image_row(row, score, rank, self.store) for row, score, rank in chosen], reason)
        return out

    def generation_request(self, row: dict) -> dict:
        g = self.cfg.generation
        request: dict[str, Any] = {GEN: True, "image_seed": row_seed(g.diffusion.seed, row["id"])}
        if g.describe == "template":
            name = PROMPTS[1]
            request["image_prompt"] = render(self.sources[name], name, entity=row.get("entity") or "",
                                             entity_type=row.get("entity_type") or "", title=row.get("title"))
        else:
            request[MESSAGES] = json.dumps(describe_messages(self.sources, g, row), ensure_ascii=False)
        return request

    def explode(self, table: pa.Table, rows: list[dict], found: list[list[dict]], attempts: list[list[dict]]) -> pa.Table:
        """One output row per image found (fan-out), or one row without an image; statuses and `_n`."""
        fan = self.cfg.retrieval.top_k > 1
        take, extra, statuses, reasons, slots, counts = [], [], [], [], [], []
        for i, images in enumerate(found):
            units = images or [{}]
            for k, image in enumerate(units):
                take.append(i)
                extra.append({**image, "image_attempts": attempts[i],
                              "id": f"{rows[i]['id']}-i{k}" if fan else rows[i]["id"]})
                ok = image.get("query_image") is not None  # a generation request is settled by DrawFn
                statuses.append(OK if ok else FILTERED)
                reasons.append("" if ok else "filter:no_image")
                slots.append(k)
                counts.append(len(units))
        out = table.take(pa.array(take, pa.int64()))
        out = set_column(out, "id", pa.array([e["id"] for e in extra], pa.string()))
        for name, tp in OUT_FIELDS:
            out = set_column(out, name, pa.array([e.get(name) for e in extra], tp))
        out = set_column(out, GEN, pa.array([bool(e.get(GEN)) for e in extra], pa.bool_()))
        if self.cfg.generation.describe == "llm" and "generation" in self.cfg.sources:
            out = set_column(out, MESSAGES, pa.array([e.get(MESSAGES) for e in extra], pa.string()))
        out = set_column(out, SLOT, pa.array(slots, pa.int32()))
        out = set_column(out, NROWS, pa.array(counts, pa.int32()))
        return set_status(out, statuses, reasons)


class DrawFn:
    """Ray actor: draws the rows marked `_gen` (their prompt from the template, or parsed from the
    LLM's JSON) with a diffusers pipeline, stores the images and settles every row's status."""

    def __init__(self, cfg: dict, run_uri: str, model_path: str, model_id: str) -> None:
        self.cfg = ImagesConfig.from_dict(cfg)
        self.store = ImageStore.from_uri(run_uri)
        self.model_path = model_path
        self.model_id = model_id
        self._drawer = None

    def __call__(self, table: pa.Table) -> pa.Table:
        from pipeline.stage import REASON, STATUS

        g = self.cfg.generation
        gen = table[GEN].to_pylist()
        statuses, reasons = table[STATUS].to_pylist(), table[REASON].to_pylist()
        cols = {name: table[name].to_pylist() for name, _ in OUT_FIELDS}
        todo = []
        for i in (i for i, flag in enumerate(gen) if flag):
            if g.describe == "llm":
                text, reason = parse_description(table[RAW][i].as_py(), table[LLM_ERROR][i].as_py(),
                                                 g.max_description_chars)
                if reason:
                    cols["image_attempts"][i] = [*cols["image_attempts"][i], {"source": "generation", "reason": reason}]
                    continue
                cols["image_prompt"][i] = text
            todo.append(i)
        if todo:
            if self._drawer is None:
                from pipeline.models.diffusion import Drawer

                self._drawer = Drawer(self.model_path, g.diffusion)
            # A failing pipeline (CUDA OOM after the drawer's smaller retries, a dead device) is the system,
            # not these rows: it propagates, the shard fails and resume redoes it (R31, R35).
            images = self._drawer.draw([cols["image_prompt"][i] for i in todo],
                                       [cols["image_seed"][i] for i in todo])
            for i, img in zip(todo, images):
                cols["query_image"][i] = _store_png(self.store, img)
                cols["image_source"][i], cols["image_origin"][i] = "generated", self.model_id
                cols["image_model"][i] = self.model_id
                statuses[i], reasons[i] = OK, ""
        for name, tp in OUT_FIELDS:
            table = set_column(table, name, pa.array(cols[name], tp))
        drop = [c for c in (GEN, MESSAGES, RAW, LLM_ERROR) if c in table.column_names]
        return set_status(table.drop_columns(drop), statuses, reasons)


def _store_png(store: ImageStore, img) -> dict:
    import io

    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return store.put(buf.getvalue(), "png", img.width, img.height)


def _drop_gen(table: pa.Table) -> pa.Table:
    drop = [c for c in (GEN, MESSAGES) if c in table.column_names]
    return table.drop_columns(drop)


class Images(Stage):
    name: ClassVar[str] = "images"
    config_cls: ClassVar[type] = ImagesConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id", "doc_id", "text", "title", "image", "image_url", "entity",
                                                "entity_type", "rewritten_query")
    output_columns: ClassVar[tuple[str, ...]] = tuple(name for name, _ in OUT_FIELDS)
    prompt_files: ClassVar[tuple[str, ...]] = PROMPTS

    @property
    def fanout(self) -> int | None:
        return None

    def prepare(self) -> None:
        from pipeline.models.sources import resolve_model

        cfg = self.config
        self.sources = load_sources(self.context.prompts_dir, self.prompt_files)
        self.retriever_path = self.retriever_id = None
        if "retrieval" in cfg.sources and cfg.pool.path:
            self.retriever_path, self.retriever_id = retriever_model(cfg, self.context.cache_dir)
        self.draw_path = self.draw_id = self.llm_path = self.llm_id = None
        if "generation" in cfg.sources:
            g = cfg.generation
            self.draw_path, self.draw_id = resolve_model(g.diffusion.model, self.context.cache_dir, None,
                                                         "images.generation.diffusion")
            if g.describe == "llm":
                self.llm_path, self.llm_id = resolve_model(g.llm.model, self.context.cache_dir, g.llm.fallback_model,
                                                           "images.generation.llm")
        # A template with a variable the stage does not provide fails here, before any work.
        row = {"id": "x", "entity": "Eiffel Tower", "entity_type": "tower", "title": "T", "text": "A passage.",
               "rewritten_query": "When was this tower built?"}
        render(self.sources[PROMPTS[0]], PROMPTS[0], entity="e", entity_type="t", query="q", title=None)
        render(self.sources[PROMPTS[1]], PROMPTS[1], entity="e", entity_type="t", title=None)
        describe_messages(self.sources, cfg.generation, row)

    def input_identity(self) -> dict:
        """The pool's files: an edited pool re-runs this stage (and rebuilds the index)."""
        if "retrieval" in self.config.sources and self.config.pool.path:
            return pool_identity(self.config.pool)
        return {}

    def models(self) -> dict[str, str]:
        out = {}
        if self.retriever_id:
            out["image_retriever"] = f"{self.retriever_id} ({self.config.retrieval.retriever})"
        if self.draw_id:
            out["image_generator"] = self.draw_id
        if self.llm_id:
            out["image_describer"] = f"{self.llm_id} via {self.config.generation.llm.backend}"
        return out

    def indexes(self) -> tuple[IndexSpec, ...]:
        if not self.retriever_path:
            return ()
        return (pool_spec(self.config, self.context, self.retriever_path, self.retriever_id),)

    def schedule(self) -> tuple[Phase, ...]:
        """The pool index's build (retrieval from a pool), then ImagesFn, the describer LLM's pools
        (generation with `describe: llm`) and DrawFn, all at once and all on `images.resources`."""
        cfg = self.config
        index = ImagePool(cfg, self.context, "").schedule() if "retrieval" in cfg.sources and cfg.pool.path else ()
        pools = [actor_pool("ImagesFn", cfg.resources, self.name)]
        if "generation" in cfg.sources:
            if cfg.generation.describe == "llm":
                from pipeline.models.llm import llm_pools

                pools += llm_pools(cfg.generation.llm, cfg.resources, self.name, f"{self.name}.generation.llm")
            pools.append(actor_pool("DrawFn", cfg.resources, self.name))
        return (*index, Phase(self.name, tuple(pools)))

    def apply(self, ds):
        cfg = self.config
        kwargs = {"cfg": to_dict(cfg), "sources": self.sources, "run_uri": self.context.run_uri,
                  "index": self.bound_indexes.get("image"), "retriever": self.retriever_path}
        ds = actor_map(ds, ImagesFn, kwargs, cfg.resources)
        if "generation" not in cfg.sources:
            return glue_map(ds, _drop_gen)
        g = cfg.generation
        if g.describe == "llm":
            from pipeline.models.llm import generate_json

            schema = {"type": "object", "required": ["description"],
                      "properties": {"description": {"type": "string", "minLength": 1,
                                                     "maxLength": g.max_description_chars}}}
            ds = generate_json(ds, g.llm, self.llm_path, schema, cfg.resources, f"{self.name}.generation")
        return actor_map(ds, DrawFn, {"cfg": to_dict(cfg), "run_uri": self.context.run_uri,
                                      "model_path": self.draw_path, "model_id": self.draw_id}, cfg.resources)

