"""MegaPairs similarity views: one declared index per view (`mine_pairs.views`), over the pool's images.

A view embeds every pool image under one notion of similarity (MegaPairs §3.1):
- `clip_image`: the open_clip image tower over the image (visual-semantic; EVA-CLIP in the paper);
- `dino`: DINOv2 through transformers (visual pattern), CLS token or mean of patch tokens (`pooling`);
- `clip_text`: the open_clip TEXT tower over the image's caption (the paper's best single view);
- `text`: a sentence-transformers model over the caption (our extra option).
Vectors are L2-normalised (inner product = cosine). Text views skip caption-less images:
`filter:no_caption`, recorded in the index's `_rejects/`, so the image is absent from that view's
index and mined by the other views only. A stored image that is not a valid image is `error:image_<kind>`
(io/images.decode_image); a storage failure propagates after retries (R35).

The runner builds each view as `IndexSpec(view.name, "pool", ViewEmbed, identity, kind, nlist)`: the
side stage reads the pool section's output (id, image, caption, license, origin) and writes those
columns plus `embedding`, so the index's rows.arrow carries the metadata mine_pairs attaches to pairs.
Identity = the resolved model and the settings that change the vectors (kind, pretrained tag, DINO
pooling, text prefix and length); NOT the band nor the resources: a new band re-mines, never re-embeds.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from pipeline.config import check, to_dict
from pipeline.io.image_store import ImageStore
from pipeline.io.images import ImageError, load_stored
from pipeline.io.index_config import IndexConfig
from pipeline.io.indexes import IndexSpec, embedding_array
from pipeline.scheduling import Phase
from pipeline.stage import (
    FILTERED,
    OK,
    REJECTED,
    SHARD,
    SRC,
    Resources,
    Stage,
    StageConfig,
    actor_map,
    actor_pool,
    set_status,
)

VIEW_KINDS = ("clip_image", "dino", "clip_text", "text")
TEXT_KINDS = ("clip_text", "text")
POOL_COLUMNS = ("id", "image", "caption", "license", "origin")
# Embed shards are a fixed size, not the config's: a resumed index build must plan the shards of the
# first attempt, and shard_rows is not part of the index key.
VIEW_SHARD_ROWS = 512
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ViewConfig:
    # The view's name: its index folder prefix, its entry in `pair_views`.
    name: str = "clip_image"
    kind: Literal["clip_image", "dino", "clip_text", "text"] = "clip_image"
    # clip kinds: `tiny:clip`, an open_clip architecture (with `pretrained`), `local-dir:` or `hf-hub:`;
    # dino: `tiny:dinov2`, a folder or hub id (facebook/dinov2-large); text: as TextEmbedConfig.model.
    model: str = "tiny:clip"
    # Open band (lo, hi) of the cosine similarity a neighbour must fall strictly inside to be a target.
    band: tuple[float, float] = (0.8, 0.96)
    # dino only: the CLS token or the mean of the patch tokens.
    pooling: Literal["cls", "mean"] = "cls"
    # clip kinds only: open_clip's pretrained tag or weights file (None for tiny:, local-dir:, hf-hub:).
    pretrained: str | None = None
    # text only: prepended to every caption (instruction-tuned embedders), and the token limit.
    prefix: str = ""
    max_seq_length: int | None = None
    trust_remote_code: bool = False
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    # How the view's embed side stage runs (GPU views: num_gpus); batch_size = images or captions per
    # forward pass. shard_rows is fixed (VIEW_SHARD_ROWS).
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(batch_size=32))

    def __post_init__(self) -> None:
        where = f"mine_pairs: view {self.name!r}"
        check(
            bool(_NAME.match(self.name or "")),
            where,
            "name",
            "must be letters, digits, `_`, `.` or `-` (it names the view's index folder)",
        )
        check(
            self.kind in VIEW_KINDS,
            where,
            "kind",
            f"must be one of {', '.join(VIEW_KINDS)} (got {self.kind!r})",
        )
        check(bool(self.model.strip()), where, "model", "must name a model")
        check(
            self.pooling in ("cls", "mean"), where, "pooling", f"must be cls or mean (got {self.pooling!r})"
        )
        band = tuple(self.band)
        check(len(band) == 2, where, "band", f"must be two numbers [lo, hi] (got {list(band)})")
        lo, hi = band
        check(
            -1.0 <= lo < hi <= 1.0,
            where,
            "band",
            f"must satisfy -1 <= lo < hi <= 1 (got [{lo}, {hi}]); cosine similarities lie in [-1, 1]",
        )
        if self.max_seq_length is not None:
            check(
                self.max_seq_length >= 8, where, "max_seq_length", f"must be >= 8 (got {self.max_seq_length})"
            )


def view_identity(view: ViewConfig, model_id: str) -> dict:
    """What makes the view's vectors (the index key's identity): never the band nor the resources."""
    identity: dict[str, Any] = {"layout": 1, "kind": view.kind, "model": model_id}
    if view.kind in ("clip_image", "clip_text"):
        identity["pretrained"] = view.pretrained
    if view.kind == "dino":
        identity["pooling"] = view.pooling
    if view.kind == "text":
        identity.update(
            prefix=view.prefix, max_seq_length=view.max_seq_length, trust_remote_code=view.trust_remote_code
        )
    return identity


def resolve_view_model(view: ViewConfig, cache_dir) -> tuple[str, str]:
    """(what the view's backend loads, the model's identity for manifests and the index key)."""
    if view.kind in ("clip_image", "clip_text"):
        from pipeline.models.clip import open_clip_name

        name, identity = open_clip_name(view.model, cache_dir)
        return name, f"{identity} (open_clip{', ' + view.pretrained if view.pretrained else ''})"
    from pipeline.models.sources import resolve_model

    return resolve_model(view.model, cache_dir, None, f"mine_pairs.views.{view.name}.model")


class ViewModel:
    """The backend of a view: `encode(images, captions) -> (n, dim)` for the rows it is given."""

    def __init__(self, view: ViewConfig, model_path: str) -> None:
        self.kind = view.kind
        batch = view.resources.batch_size
        if view.kind in ("clip_image", "clip_text"):
            from pipeline.models.clip import ClipConfig, ClipModel

            self.model = ClipModel(
                model_path, ClipConfig(model=view.model, pretrained=view.pretrained, batch_size=batch)
            )
        elif view.kind == "dino":
            from pipeline.models.dino import DinoModel

            self.model = DinoModel(model_path, view.pooling, batch)
        else:
            from pipeline.models.text_embed import TextEmbedConfig, TextEmbedder

            cfg = TextEmbedConfig(
                model=view.model,
                passage_prefix=view.prefix,
                max_seq_length=view.max_seq_length,
                trust_remote_code=view.trust_remote_code,
            )
            self.model = TextEmbedder(model_path, cfg)
        self.prefix, self.batch = view.prefix, batch
        self.dim = int(self.model.dim)

    def encode(self, images: list, captions: list[str]) -> np.ndarray:
        if self.kind in ("clip_image", "dino"):
            return self.model.encode_images(images)
        if self.kind == "clip_text":
            return self.model.encode_texts(captions)
        return self.model.encode([self.prefix + c for c in captions], self.batch)


def load_view_model(view: ViewConfig, model_path: str) -> Any:
    """The view's backend, loaded once per actor (tests replace this with a deterministic fake)."""
    return ViewModel(view, model_path)


class ViewEmbedFn:
    """Ray actor: pool rows in, the same rows plus `embedding` out (zeros on rows it did not embed)."""

    def __init__(self, view: dict, model_path: str, run_uri: str) -> None:
        from pipeline.config import build

        self.view = build(ViewConfig, view, "view", {})
        self.model = load_view_model(self.view, model_path)
        self.store = ImageStore.from_uri(run_uri)

    def __call__(self, table: pa.Table) -> pa.Table:
        n = table.num_rows
        statuses, reasons = [OK] * n, [""] * n
        refs, captions = table["image"].to_pylist(), table["caption"].to_pylist()
        text_view = self.view.kind in TEXT_KINDS
        todo, images = [], []
        for i in range(n):
            if text_view:
                if not (captions[i] or "").strip():
                    statuses[i], reasons[i] = FILTERED, "filter:no_caption"
                    continue
            else:
                # A failing storage read propagates (R35); only bytes that are not a valid image are a
                # verdict.
                if refs[i] is None:
                    statuses[i], reasons[i] = REJECTED, "error:no_image"
                    continue
                try:
                    images.append(load_stored(self.store, refs[i]))
                except ImageError as exc:
                    statuses[i], reasons[i] = REJECTED, f"error:image_{exc.kind}"
                    continue
            todo.append(i)
        full = np.zeros((n, self.model.dim), np.float32)
        if todo:
            vectors = self.model.encode(images, [captions[i] for i in todo])
            full[todo] = np.nan_to_num(np.asarray(vectors, np.float32))
        out = table.select([c for c in POOL_COLUMNS if c in table.column_names])
        out = out.append_column("embedding", embedding_array(full))
        out = out.append_column(SHARD, table[SHARD]).append_column(SRC, table[SRC])
        return set_status(out, statuses, reasons)


@dataclass(frozen=True)
class ViewEmbedConfig(StageConfig):
    view: ViewConfig = dataclasses.field(default_factory=ViewConfig)


class ViewEmbed(Stage):
    """Not a pipeline stage: the runner runs it to build one view's index (resumable)."""

    name: ClassVar[str] = "mine_pairs:view"
    config_cls: ClassVar[type] = ViewEmbedConfig
    input_columns: ClassVar[tuple[str, ...]] = POOL_COLUMNS
    output_columns: ClassVar[tuple[str, ...]] = (*POOL_COLUMNS, "embedding")

    def __init__(
        self, config: ViewEmbedConfig, context: Any, model_path: str, section: str | None = None
    ) -> None:
        super().__init__(config, context, section)
        self.model_path = model_path

    def schedule(self) -> tuple[Phase, ...]:
        # Named `<stage>:<view>`; the view's own `resources` set the pool.
        knob = f"{self.name.split(':')[0]}.views[{self.config.view.name}]"
        return (Phase(self.name, (actor_pool("ViewEmbedFn", self.config.resources, knob),)),)

    def apply(self, ds):
        kwargs = {
            "view": to_dict(self.config.view),
            "model_path": self.model_path,
            "run_uri": self.context.run_uri,
        }
        return actor_map(ds, ViewEmbedFn, kwargs, self.config.resources)


def view_spec(
    view: ViewConfig, context: Any, model_path: str, model_id: str, stage: str = "mine_pairs"
) -> IndexSpec:
    """The view's declared index over the `pool` section's output."""
    cfg = ViewEmbedConfig(
        view=view, resources=dataclasses.replace(view.resources, shard_rows=VIEW_SHARD_ROWS)
    )
    embed = ViewEmbed(cfg, context, model_path, section=f"{stage}:{view.name}")
    return IndexSpec(
        view.name, "pool", embed, view_identity(view, model_id), view.index.kind, view.index.nlist
    )
