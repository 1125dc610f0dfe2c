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
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
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
from pipeline.stage import SHARD, SRC, Resources, Stage, StageConfig, actor_map, mark_all_ok

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
        """(image, "") or (None, `error:image_unreadable` | the GmeImageError's reason)."""
        from PIL import Image

        from pipeline.models import gme

        try:
            with Image.open(io.BytesIO(self.store.get(ref))) as img:
                rgb = img.convert("RGB")
        except Exception:  # noqa: BLE001 - a missing file, a cut file or not an image: all unreadable
            return None, "error:image_unreadable"
        try:
            return gme.resize_for_gme(rgb, self.cfg.min_image_tokens, self.cfg.max_image_tokens), ""
        except gme.GmeImageError as exc:
            return None, exc.reason


def encode_queries(
    embedder: Any, loader: ImageLoader, texts: list, refs: list, instruction: str, chunk: int
) -> tuple[np.ndarray, list[str]]:
    """Fused-query vectors (zero rows where a row failed) and per-row reasons ("" = encoded).

    Reasons: `error:no_query_image` (null reference), `error:image_unreadable`, GmeImageError reasons.
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
        meta = {name: table[name] for name in ("id", "doc_id", "title", "text", "image", "content_hash")}
        meta.update(text_hash=[text_hash(t) for t in texts], image_used=used)
        out = pa.Table.from_pydict(meta, schema=POOL_SCHEMA)
        out = out.append_column("embedding", embedding_array(np.asarray(matrix, np.float32)))
        return mark_all_ok(out.append_column(SHARD, table[SHARD]).append_column(SRC, table[SRC]))


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

    def apply(self, ds):
        cfg, run_uri = self.config, self.context.run_uri
        if cfg.gme.backend == "vllm":
            from pipeline.stage import glue_map
            from pipeline.stages import gme_vllm

            ds = gme_vllm.embed_candidates(
                ds, cfg.gme, self.model_path, cfg.passage_images, cfg.resources, self.name, run_uri
            )
            return glue_map(ds, gme_vllm.pool_table)
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
