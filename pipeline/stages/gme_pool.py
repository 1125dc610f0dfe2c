"""The GME passage pool and the fused-query encoding that gme_score and negatives share.

The pool is every passage ingest kept, embedded by GME as a candidate: `title + " " + text`, with the
passage's own image when it has one and `passage_images` is on, and no instruction (GME's default
system prompt). The runner builds it as the declared index `gme` (pipeline/io/indexes.py) by running
the side stage `GmePoolEmbed` over ingest's output. Input columns: id, doc_id, text, title, image,
content_hash. Output (the index's rows.arrow, memory-mapped in each actor): id, doc_id, title, text,
image, content_hash, text_hash (a looser hash: case, punctuation and spacing ignored), image_used
(false when GME could not take the passage's image and the passage was embedded as text alone; the
one fallback here, counted per pool in that column rather than dropped).

Both stages declare the same IndexSpec when their model, candidate-side GME settings, passage_images
and `index.kind` / `index.nlist` agree (query_instruction, batch_size and `index.nprobe` do not count:
each stage searches the one pool with its own nprobe), so the runner embeds the
pool once (build_index reuses a finished index with the same key). Each stage names its own side
stage (`gme_score:pool`, `negatives:pool`): a stage that builds a pool under another model (negatives
re-mined with a fine-tuned checkpoint) prunes only its own stale pools, never the other stage's.

The fused query is GmeInput(text=rewritten query, image=the entity image, instruction=the task
instruction); `encode_queries` loads the images by reference in the worker, in chunks, so a shard
never holds more than one chunk of decoded images.

With `gme.backend: vllm` the same inputs are embedded by vLLM through `ray.data.llm` before the actors
run (`embed_queries`, `embed_candidates`, `pool_table`; the section at the end of this module).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipeline.config import to_dict
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.io.indexes import IndexSpec, embedding_array
from pipeline.models.gme import GmeConfig
from pipeline.scheduling import Phase
from pipeline.stage import (
    SHARD,
    SRC,
    Resources,
    Stage,
    StageConfig,
    actor_map,
    actor_pool,
    glue_map,
    mark_all_ok,
)

POOL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("doc_id", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("image", IMAGE_REF),
        ("content_hash", pa.string()),
        ("text_hash", pa.string()),
        ("image_used", pa.bool_()),
    ]
)
# Pool shards are a fixed size, not the declaring stage's: gme_score and negatives may share one pool
# build, and a resumed build must plan the shards of the first attempt whichever stage resumes it.
POOL_SHARD_ROWS = 512
# GmeConfig fields that never change a candidate's vector: left out of the pool's identity.
_QUERY_ONLY = ("query_instruction", "batch_size", "model", "backend", "vllm")
_NON_WORD = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class GmePoolConfig(StageConfig):
    gme: GmeConfig = dataclasses.field(default_factory=GmeConfig)
    passage_images: bool = True


def text_hash(text: str | None) -> str:
    """A duplicate key looser than ingest's content_hash: NFKC, case, punctuation and spacing ignored."""
    words = _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text or "").casefold()).split()
    return hashlib.sha256(" ".join(words).encode("utf-8")).hexdigest()[:32]


def pool_rows(table: pa.Table, vectors: np.ndarray, image_used: list[bool]) -> pa.Table:
    """A passage pool's embed output: each passage's metadata (POOL_SCHEMA: what a hit's exclusions
    compare and a negative carries) beside its vector, tagged for the runner."""
    meta = {name: table[name] for name in ("id", "doc_id", "title", "text", "image", "content_hash")}
    meta.update(text_hash=[text_hash(t) for t in table["text"].to_pylist()], image_used=image_used)
    out = pa.Table.from_pydict(meta, schema=POOL_SCHEMA)
    out = out.append_column("embedding", embedding_array(np.asarray(vectors, np.float32)))
    return mark_all_ok(out.append_column(SHARD, table[SHARD]).append_column(SRC, table[SRC]))


def candidate_identity(gme: GmeConfig, model_id: str, passage_images: bool) -> dict:
    """What makes the pool's vectors: the resolved model and every candidate-side GME setting."""
    values = {k: v for k, v in to_dict(gme).items() if k not in _QUERY_ONLY}
    if gme.backend != "transformers":
        # Another engine's vectors (equal to ~1e-6, not bit for bit): a pool of its own.
        values.update(backend=gme.backend, engine_dtype=gme.vllm.dtype)
    return {"model_id": model_id, **values, "passage_images": passage_images}


def load_embedder(model_path: str, cfg: GmeConfig) -> Any:
    """The GME backend, loaded once per actor (tests replace this with a deterministic fake)."""
    from pipeline.models.gme import GmeEmbedder

    return GmeEmbedder(model_path, cfg)


class ImageLoader:
    """Image references -> PIL images GME accepts, or the reason a row cannot have one."""

    def __init__(self, run_uri: str, cfg: GmeConfig) -> None:
        self.store = ImageStore.from_uri(run_uri)
        self.cfg = cfg

    def load(self, ref: dict) -> tuple[Any, str]:
        """(image, "") or (None, `error:image_<kind>` | the GmeImageError's reason). A failing store read
        (ImageReadError, a lost file) propagates: the shard fails and resume redoes it (R35)."""
        from pipeline.io.images import ImageError, load_stored
        from pipeline.models import gme

        try:
            rgb = load_stored(self.store, ref)
        except ImageError as exc:
            return None, f"error:image_{exc.kind}"
        try:
            return gme.resize_for_gme(rgb, self.cfg.min_image_tokens, self.cfg.max_image_tokens), ""
        except gme.GmeImageError as exc:
            return None, exc.reason


def encode_queries(
    embedder: Any, loader: ImageLoader, texts: list, refs: list, instruction: str, chunk: int
) -> tuple[np.ndarray, list[str]]:
    """Fused-query vectors (zero rows where a row failed) and per-row reasons ("" = encoded).

    Reasons: `error:no_query_image` (null reference), `error:image_<kind>` (bytes that are not a valid
    image), GmeImageError reasons.
    """
    from pipeline.models.gme import GmeInput

    vectors = np.zeros((len(texts), embedder.dim), np.float32)
    reasons = [""] * len(texts)
    for start in range(0, len(texts), chunk):
        rows, inputs = [], []
        for i in range(start, min(start + chunk, len(texts))):
            image, reasons[i] = (None, "error:no_query_image") if refs[i] is None else loader.load(refs[i])
            if image is not None:
                rows.append(i)
                inputs.append(GmeInput(text=texts[i] or "", image=image, instruction=instruction))
        if inputs:
            vectors[rows] = embedder.encode(inputs)
    return vectors, reasons


def passage_inputs(
    loader: ImageLoader | None, titles: list, texts: list, refs: list
) -> tuple[list, list[bool]]:
    """Candidate inputs (no instruction) and whether each kept its image; `loader=None`: text only."""
    from pipeline.models.gme import GmeInput

    inputs, used = [], []
    for title, text, ref in zip(titles, texts, refs):
        image = loader.load(ref)[0] if loader is not None and ref is not None else None
        inputs.append(GmeInput(text=text, title=title or None, image=image))
        used.append(image is not None)
    return inputs, used


class GmePoolEmbedFn:
    """Ray actor: passages in, (id, embedding) plus the pool metadata out."""

    def __init__(self, model_path: str, cfg: dict, run_uri: str) -> None:
        self.cfg = GmePoolConfig.from_dict(cfg)
        self.embedder = load_embedder(model_path, self.cfg.gme)
        self.loader = ImageLoader(run_uri, self.cfg.gme) if self.cfg.passage_images else None

    def __call__(self, table: pa.Table) -> pa.Table:
        titles, texts, refs = (table[c].to_pylist() for c in ("title", "text", "image"))
        step = self.cfg.resources.batch_size
        vectors, used = [], []
        # Chunked so that one chunk of decoded images at most is alive.
        for s in range(0, len(texts), step):
            chunk = slice(s, s + step)
            inputs, kept = passage_inputs(self.loader, titles[chunk], texts[chunk], refs[chunk])
            vectors.append(self.embedder.encode(inputs))
            used += kept
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, self.embedder.dim), np.float32)
        return pool_rows(table, matrix, used)


class GmePoolEmbed(Stage):
    """Not a pipeline stage: the runner runs it to build the GME pool index (resumable)."""

    name: ClassVar[str] = "gme:pool"
    config_cls: ClassVar[type] = GmePoolConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id", "doc_id", "text", "title", "image", "content_hash")
    output_columns: ClassVar[tuple[str, ...]] = ("embedding", *POOL_SCHEMA.names)

    def __init__(
        self, config: GmePoolConfig, context: Any, model_path: str, section: str | None = None
    ) -> None:
        super().__init__(config, context, section)
        self.model_path = model_path

    def schedule(self) -> tuple[Phase, ...]:
        # Named `<stage>:pool`; the stage's own `resources` set the pool.
        return (Phase(self.name, (actor_pool("GmePoolEmbedFn", self.config.resources, self.name.split(":")[0]),)),)

    def apply(self, ds):
        cfg, run_uri = self.config, self.context.run_uri
        if cfg.gme.backend == "vllm":
            ds = embed_candidates(ds, cfg.gme, self.model_path, cfg.passage_images, cfg.resources, self.name, run_uri)
            return glue_map(ds, pool_table)
        kwargs = {"model_path": self.model_path, "cfg": to_dict(cfg), "run_uri": run_uri}
        return actor_map(ds, GmePoolEmbedFn, kwargs, cfg.resources)


def pool_spec(
    stage: str,
    gme: GmeConfig,
    model_path: str,
    model_id: str,
    passage_images: bool,
    kind: str,
    nlist: int,
    resources: Resources,
    context: Any,
) -> IndexSpec:
    """The `gme` index over ingest's passages, as `stage` declares it."""
    cfg = GmePoolConfig(
        gme=gme,
        passage_images=passage_images,
        resources=dataclasses.replace(resources, shard_rows=POOL_SHARD_ROWS),
    )
    embed = GmePoolEmbed(cfg, context, model_path, section=f"{stage}:pool")
    return IndexSpec("gme", "ingest", embed, candidate_identity(gme, model_id, passage_images), kind, nlist)


# --- gme.backend vllm -------------------------------------------------------------------------------
# The vectors come from vLLM's pooling runner through `ray.data.llm` (models/vllm_embed.py, GME's
# sequential positions) before the stages' actors run, instead of from a GmeEmbedder inside them. The
# inputs are the transformers path's, so both backends see the same GME inputs:
# - the fused query: `rewritten_query` + `query_image` under the stage's instruction; the actors turn a
#   null image into `error:no_query_image` as before, and an image or engine error into the row's reason;
# - a candidate (pool row, or gme_score's positive without a pool): `title + " " + text`, with the
#   passage's own image when `passage_images` is on and GME can take it, else text alone (`image_used`).
#   Whether GME can take it is decided in a light map before the engine (`usable_image`), by the same
#   `ImageLoader` as the transformers path.
# The vectors travel to the actors in temporary columns (`QUERY`, `POSITIVE`), which the actors drop. A
# pool row the engine failed on fails its shard (nothing half-embedded is committed; resume redoes it).

# Temporary columns: (vector, reason) of the fused query and of the positive passage.
QUERY = ("_gme_query_vec", "_gme_query_error")
POSITIVE = ("_gme_pos_vec", "_gme_pos_error")
TEMP_COLUMNS = (*QUERY, *POSITIVE)
_INSTRUCTION, _IMAGE = "_gme_instruction", "_gme_image"


class StoreImageBytes:
    """An image reference -> its encoded bytes from the run's image store (opened once per worker)."""

    def __init__(self, run_uri: str) -> None:
        self.run_uri = run_uri
        self._store = None

    def __call__(self, ref: Any) -> bytes | None:
        from pipeline.io.image_store import ImageStore

        if ref is None:
            return None
        if self._store is None:
            self._store = ImageStore.from_uri(self.run_uri)
        return self._store.get(ref)

    def __getstate__(self) -> dict:
        return {"run_uri": self.run_uri, "_store": None}


def usable_image(table: pa.Table, run_uri: str, gme: GmeConfig, source: str) -> pa.Table:
    """`_gme_image`: the passage's image reference where GME can take the image, else null (text alone)."""
    loader = ImageLoader(run_uri, gme)
    refs = table[source].to_pylist()
    kept = [ref if ref is not None and loader.load(ref)[0] is not None else None for ref in refs]
    return table.append_column(_IMAGE, pa.array(kept, table.schema.field(source).type))


def _constant(table: pa.Table, name: str, value: str) -> pa.Table:
    return table.append_column(name, pa.array([value] * table.num_rows, pa.string()))


def _rename_outputs(table: pa.Table, into: tuple[str, str], drop: tuple[str, ...]) -> pa.Table:
    from pipeline.models.vllm_embed import EMBED_DETAIL, EMBED_ERROR, EMBEDDING

    table = table.drop_columns([c for c in (*drop, EMBED_DETAIL) if c in table.column_names])
    names = {EMBEDDING: into[0], EMBED_ERROR: into[1]}
    return table.rename_columns([names.get(c, c) for c in table.column_names])


def _embed(ds, gme: GmeConfig, model_path: str, resources: Resources, stage: str, run_uri: str, columns):
    from pipeline.models.vllm_embed import vllm_embed

    return vllm_embed(
        ds, gme.vllm, model_path, gme, resources, stage, columns, load_image=StoreImageBytes(run_uri)
    )


def embed_queries(
    ds, gme: GmeConfig, model_path: str, instruction: str, resources: Resources, stage: str, run_uri: str
):
    """`QUERY` columns: the fused query's vector (null for a reject) and reason ("" = encoded)."""
    from pipeline.models.vllm_embed import EmbedColumns

    ds = glue_map(ds, _constant, fn_kwargs={"name": _INSTRUCTION, "value": instruction})
    columns = EmbedColumns(text="rewritten_query", image="query_image", instruction=_INSTRUCTION)
    ds = _embed(ds, gme, model_path, resources, stage, run_uri, columns)
    return glue_map(ds, _rename_outputs, fn_kwargs={"into": QUERY, "drop": (_INSTRUCTION,)})


def embed_candidates(
    ds,
    gme: GmeConfig,
    model_path: str,
    passage_images: bool,
    resources: Resources,
    stage: str,
    run_uri: str,
    into: tuple[str, str] = POSITIVE,
):
    """`into` columns: the passage's candidate vector and reason; `_gme_image` stays (the image used)."""
    from pipeline.models.vllm_embed import EmbedColumns

    image = None
    if passage_images:
        ds = glue_map(ds, usable_image, fn_kwargs={"run_uri": run_uri, "gme": gme, "source": "image"})
        image = _IMAGE
    columns = EmbedColumns(text="text", title="title", image=image)
    ds = _embed(ds, gme, model_path, resources, stage, run_uri, columns)
    return glue_map(ds, _rename_outputs, fn_kwargs={"into": into, "drop": ()})


def vectors_of(table: pa.Table, columns: tuple[str, str], dim: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(n, dim) float32 vectors (zero rows for rejects) and per-row reasons from temporary columns."""
    values = table[columns[0]].to_pylist()
    reasons = [r or "" for r in table[columns[1]].to_pylist()]
    width = dim or next((len(v) for v in values if v is not None), 0)
    out = np.zeros((len(values), width), np.float32)
    for i, v in enumerate(values):
        if v is not None:
            out[i] = v
    return out, reasons


def drop_temp(table: pa.Table) -> pa.Table:
    return table.drop_columns([c for c in (*TEMP_COLUMNS, _IMAGE) if c in table.column_names])


def pool_table(table: pa.Table) -> pa.Table:
    """The pool's rows (gme_pool.POOL_SCHEMA + embedding) from embedded candidates (`POSITIVE` columns).

    Raises:
        RuntimeError: a passage the engine could not embed (its shard fails and is redone on resume).
    """
    vectors, reasons = vectors_of(table, POSITIVE)
    failed = [(i, r) for i, r in enumerate(reasons) if r]
    if failed:
        ids = table["id"].to_pylist()
        raise RuntimeError(
            f"gme pool: {len(failed)} passage(s) not embedded by the vLLM engine, e.g. {ids[failed[0][0]]!r}: "
            f"{failed[0][1]}; the shard is not committed"
        )
    meta = {name: table[name] for name in ("id", "doc_id", "title", "text", "image", "content_hash")}
    used = [False] * table.num_rows
    if _IMAGE in table.column_names:
        used = [ref is not None for ref in table[_IMAGE].to_pylist()]
    meta.update(text_hash=[text_hash(t) for t in table["text"].to_pylist()], image_used=used)
    out = pa.Table.from_pydict(meta, schema=POOL_SCHEMA)
    out = out.append_column("embedding", embedding_array(vectors))
    return mark_all_ok(out.append_column(SHARD, table[SHARD]).append_column(SRC, table[SRC]))
