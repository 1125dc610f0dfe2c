"""images: give every query an image of its entity, trying sources in the configured order (GME §1a row 5).

Sources (`images.sources`, tried in order until one gives an image):
- `doc`: the passage's own image; else its `image_url`, fetched by the safe fetcher (io/fetch.py).
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
source gave an image; the attempts say why), `error:generation_failed`.
Attempt reasons: `doc:no_image`, `error:fetch_<kind>`, `error:image_<kind>`, `retrieval:no_pool`,
`retrieval:empty_pool`, `retrieval:below_min_score`, `retrieval:empty_query`, and the LLM's
`error:invalid_json` / `error:schema` / `error:truncated_output` / `error:timeout`... for descriptions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from pipeline.columns import set_column
from pipeline.config import check, to_dict
from pipeline.io.fetch_config import FetchConfig
from pipeline.io.image_pool import POOL_READERS, PoolConfig, load_pool_batch, plan_pool, pool_identity
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.io.indexes import IndexHandle, IndexSpec, embedding_array
from pipeline.models.clip import ClipConfig
from pipeline.models.diffusion import DiffusionConfig
from pipeline.models.llm_config import LLM_ERROR, MESSAGES, RAW, LLMConfig
from pipeline.models.text_embed import TextEmbedConfig
from pipeline.prompts import load_sources, render
from pipeline.stage import (
    FILTERED,
    NROWS,
    OK,
    REJECTED,
    SLOT,
    Resources,
    Stage,
    StageConfig,
    actor_map,
    glue_map,
    set_status,
)

SOURCES = ("doc", "retrieval", "generation")
PROMPTS = ("images/retrieval_query.j2", "images/describe.j2", "images/describe_system.j2", "images/describe_user.j2")
ATTEMPT = pa.struct([("source", pa.string()), ("reason", pa.string())])
# Internal column: the row still needs a generated image (set by the lookup, read by the drawer).
GEN = "_gen"
OUT_FIELDS = (
    ("query_image", IMAGE_REF), ("image_source", pa.string()), ("image_origin", pa.string()),
    ("image_license", pa.string()), ("image_score", pa.float32()), ("image_rank", pa.int32()),
    ("image_prompt", pa.string()), ("image_seed", pa.int64()), ("image_model", pa.string()),
    ("image_attempts", pa.list_(ATTEMPT)),
)


@dataclass(frozen=True)
class RetrievalConfig:
    # `caption`: a text embedder over the pool's captions; `clip`: open_clip text tower vs image vectors.
    retriever: Literal["caption", "clip"] = "caption"
    # Images kept per row: 1 = one image per row; k > 1 = up to k rows per row (fan-out).
    top_k: int = 1
    # Neighbours fetched per query before duplicates and the score floor are applied.
    search_k: int = 20
    # Similarity floor (cosine); below it the attempt fails and the next source is tried. null = none.
    min_score: float | None = None
    index: Literal["flat", "ivf"] = "flat"
    ivf_nlist: int = 0
    ivf_nprobe: int = 16

    def __post_init__(self) -> None:
        check(self.top_k >= 1, "images.retrieval", "top_k", f"must be >= 1 (got {self.top_k})")
        check(self.search_k >= self.top_k, "images.retrieval", "search_k", "must be >= top_k")


@dataclass(frozen=True)
class GenerationConfig:
    # `llm`: the LLM writes the image prompt (JSON); `template`: prompts/images/describe.j2 renders it.
    describe: Literal["llm", "template"] = "template"
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    max_description_chars: int = 300
    passage_max_chars: int = 800

    def __post_init__(self) -> None:
        check(self.max_description_chars >= 20, "images.generation", "max_description_chars", "must be >= 20")


@dataclass(frozen=True)
class ImagesConfig(StageConfig):
    sources: tuple[str, ...] = SOURCES
    pool: PoolConfig = dataclasses.field(default_factory=PoolConfig)
    retrieval: RetrievalConfig = dataclasses.field(default_factory=RetrievalConfig)
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)
    embedder: TextEmbedConfig = dataclasses.field(default_factory=TextEmbedConfig)
    generation: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)
    fetch: FetchConfig = dataclasses.field(default_factory=FetchConfig)
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(batch_size=32, shard_rows=64))

    def __post_init__(self) -> None:
        bad = [s for s in self.sources if s not in SOURCES]
        check(not bad, "images", "sources", f"unknown source(s) {bad}; known: {', '.join(SOURCES)}")
        check(len(set(self.sources)) == len(self.sources) and bool(self.sources), "images", "sources",
              "must list each source once, at least one")
        check("generation" not in self.sources or self.sources[-1] == "generation", "images", "sources",
              "must end with `generation` when it lists it (a drawn image never fails over to another source)")


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


# --- the pool index ---------------------------------------------------------------------------------


class PoolVectorsFn:
    """Ray actor: stored pool images in, (id, embedding, metadata) out: CLIP image vectors, or caption
    vectors from the text embedder (`caption` retriever; pool rows with no caption are filtered)."""

    def __init__(self, retriever: str, model: str, cfg: dict, index_uri: str) -> None:
        self.retriever = retriever
        self.cfg = ImagesConfig.from_dict(cfg)
        self.store = ImageStore.from_uri(index_uri)
        if retriever == "clip":
            from pipeline.models.clip import ClipModel

            self.model = ClipModel(model, self.cfg.clip)
        else:
            from pipeline.models.text_embed import TextEmbedder

            self.model = TextEmbedder(model, self.cfg.embedder)

    def __call__(self, table: pa.Table) -> pa.Table:
        from pipeline.stage import REASON, STATUS

        statuses, reasons = table[STATUS].to_pylist(), table[REASON].to_pylist()
        refs, captions = table["image"].to_pylist(), table["caption"].to_pylist()
        todo = []
        for i, (status, ref, caption) in enumerate(zip(statuses, refs, captions)):
            if status != OK:
                continue
            if self.retriever == "caption" and not caption:
                statuses[i], reasons[i] = FILTERED, "filter:no_caption"
                continue
            todo.append(i)
        if self.retriever == "clip":
            vectors = self.model.encode_images([_load(self.store, refs[i]) for i in todo])
        else:
            prefix = self.cfg.embedder.passage_prefix
            vectors = self.model.encode([prefix + captions[i] for i in todo], self.cfg.resources.batch_size)
        dim = vectors.shape[1] if len(todo) else self.model.dim
        full = np.zeros((table.num_rows, dim), np.float32)
        full[todo] = vectors
        table = table.append_column("embedding", embedding_array(full))
        return set_status(table, statuses, reasons)


def _load(store: ImageStore, ref: dict):
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(store.get(ref)))
    return img.convert("RGB")


class ImagePool(Stage):
    """Not a pipeline stage: the runner runs it to build the image pool index (resumable)."""

    name: ClassVar[str] = "images:pool"
    config_cls: ClassVar[type] = ImagesConfig
    input_columns: ClassVar[tuple[str, ...]] = ()
    output_columns: ClassVar[tuple[str, ...]] = ("id", "embedding", "image", "caption", "license", "origin")

    def __init__(self, config: ImagesConfig, context, model_path: str) -> None:
        super().__init__(config, context)
        self.model_path = model_path

    def plan(self, ctx, upstream):
        return plan_pool(self.config.pool)

    def readers(self) -> dict:
        return dict(POOL_READERS)

    def apply(self, ds):
        cfg = self.config
        ds = ds.map_batches(
            load_pool_batch,
            fn_kwargs={"cfg": to_dict(cfg.pool), "fetch": to_dict(cfg.fetch), "index_uri": self.context.index_uri},
            batch_size=None, batch_format="pyarrow", num_cpus=min(1.0, cfg.resources.num_cpus),
        )
        kwargs = {"retriever": cfg.retrieval.retriever, "model": self.model_path, "cfg": to_dict(cfg),
                  "index_uri": self.context.index_uri}
        return actor_map(ds, PoolVectorsFn, kwargs, cfg.resources)


def retriever_model(cfg: ImagesConfig, cache_dir) -> tuple[str, str]:
    """(what the retriever loads, its identity) for the configured retriever."""
    if cfg.retrieval.retriever == "clip":
        from pipeline.models.clip import open_clip_name

        name, identity = open_clip_name(cfg.clip.model, cache_dir)
        return name, f"{identity} (open_clip{', ' + cfg.clip.pretrained if cfg.clip.pretrained else ''})"
    from pipeline.models.sources import resolve_model

    return resolve_model(cfg.embedder.model, cache_dir, None, "images.embedder")


def pool_spec(cfg: ImagesConfig, context, model_path: str, model_id: str) -> IndexSpec:
    r = cfg.retrieval
    # layout 2: the index carries its rows' metadata in rows.arrow (older pool indexes do not).
    identity = {"layout": 2, "pool": pool_identity(cfg.pool), "retriever": r.retriever, "model": model_id,
                "embedder": to_dict(cfg.embedder) if r.retriever == "caption" else to_dict(cfg.clip),
                "fetch": {k: v for k, v in to_dict(cfg.fetch).items() if k in ("max_side", "max_pixels", "min_side",
                                                                                "max_aspect", "jpeg_quality")}}
    return IndexSpec("image", None, ImagePool(cfg, context, model_path), identity, r.index, r.ivf_nlist)


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
            self._pool = _OpenPool(self.index)
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
        scores, hits = pool.index.search(self.encode_queries([texts[i] for i in asked]), r.search_k, r.ivf_nprobe)
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


class _OpenPool:
    """The image pool index opened in an actor. Its rows' metadata (id, image reference, license,
    origin) is the index's memory-mapped `rows.arrow`: only the rows a shard hits are read."""

    def __init__(self, handle: IndexHandle) -> None:
        from pipeline.io.fs import RunFS

        self.index = handle.open()
        self.pool_store = ImageStore(RunFS.from_uri(handle.uri))
        self.meta: dict[int, dict] = {}

    def load(self, rows) -> None:
        """Fetch the metadata of these pool rows (a shard's hits) in one read; it replaces the last
        shard's, so an actor holds only what its current shard hit."""
        wanted = sorted({int(r) for r in rows})
        table = self.index.rows_at(wanted, ["id", "image", "license", "origin"]) if wanted else None
        self.meta = dict(zip(wanted, table.to_pylist())) if wanted else {}

    def sha(self, row: int) -> str | None:
        image = self.meta[row]["image"]
        return image["sha256"] if image else None

    def image_row(self, row: int, score: float, rank: int, run_store: ImageStore) -> dict:
        meta = self.meta[row]
        ref = meta["image"]
        if not run_store.exists(ref):
            # The pool's store may be a shared index dir: the run keeps its own copy of what it uses.
            run_store.put(self.pool_store.get(ref), ref["format"], ref["width"], ref["height"])
        return {"query_image": ref, "image_source": "retrieved", "image_origin": f"pool:{meta['id']}",
                "image_license": meta["license"], "image_score": score, "image_rank": rank}


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
            try:
                images = self._drawer.draw([cols["image_prompt"][i] for i in todo], [cols["image_seed"][i] for i in todo])
            except Exception as exc:  # noqa: BLE001 - a pipeline error costs these rows, not the run
                for i in todo:
                    statuses[i], reasons[i] = REJECTED, "error:generation_failed"
                    cols["image_attempts"][i] = [*cols["image_attempts"][i],
                                                 {"source": "generation", "reason": f"error:{type(exc).__name__}"}]
                todo, images = [], []
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

