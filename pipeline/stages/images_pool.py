"""The images stage's pool index: the side stage that embeds the pool (the runner builds it once per
pool and model, resumable), its IndexSpec, and the pool as an actor opens it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from pipeline.config import to_dict
from pipeline.io.image_pool import POOL_READERS, load_pool_batch, plan_pool, pool_identity
from pipeline.io.image_store import ImageStore
from pipeline.io.images import ImageError, load_stored
from pipeline.io.indexes import IndexHandle, IndexSpec, embedding_array
from pipeline.scheduling import Phase
from pipeline.stage import FILTERED, OK, REJECTED, Stage, actor_map, actor_pool, set_status, task_pool
from pipeline.stages.images_config import ImagesConfig


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
        todo, images = [], []
        for i, (status, ref, caption) in enumerate(zip(statuses, refs, captions)):
            if status != OK:
                continue
            if self.retriever == "caption" and not caption:
                statuses[i], reasons[i] = FILTERED, "filter:no_caption"
                continue
            if self.retriever == "clip":
                # Bytes that are not a valid image cost their row; a failing read fails the shard (R35).
                try:
                    images.append(load_stored(self.store, ref))
                except ImageError as exc:
                    statuses[i], reasons[i] = REJECTED, f"error:image_{exc.kind}"
                    continue
            todo.append(i)
        if self.retriever == "clip":
            vectors = self.model.encode_images(images)
        else:
            prefix = self.cfg.embedder.passage_prefix
            vectors = self.model.encode([prefix + captions[i] for i in todo], self.cfg.resources.batch_size)
        dim = vectors.shape[1] if len(todo) else self.model.dim
        full = np.zeros((table.num_rows, dim), np.float32)
        full[todo] = vectors
        table = table.append_column("embedding", embedding_array(full))
        return set_status(table, statuses, reasons)


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

    def schedule(self) -> tuple[Phase, ...]:
        """The pool's fetch tasks (at most 1 CPU, no custom resources) and the PoolVectorsFn actors."""
        res = self.config.resources
        fetch = task_pool("load_pool_batch", res, "images", num_cpus=min(1.0, res.num_cpus), custom=False)
        return (Phase(self.name, (fetch, actor_pool("PoolVectorsFn", res, "images"))),)

    def apply(self, ds):
        cfg = self.config
        ds = ds.map_batches(
            load_pool_batch,
            fn_kwargs={"cfg": to_dict(cfg.pool), "fetch": to_dict(cfg.fetch), "store_uri": self.context.index_uri},
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
    embed = ImagePool(cfg, context, model_path)
    return IndexSpec("image", None, embed, identity, r.index.kind, r.index.nlist)


class OpenImagePool:
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
