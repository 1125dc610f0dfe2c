"""clip_filter: score each query image against its entity text with CLIP; drop weak retrieved images
(GME §1a row 6: CLIP ViT-L/14, threshold 0.2).

The text is prompts/clip_filter/text.j2 (the entity by default; the template may add the type or the
image's prompt). Every row is scored; rows whose `image_source` is in `filter_sources` (default: only
`retrieved`) and score under `threshold` are dropped as `filter:clip_score` with the score kept in the
reject. Generated images are scored and kept unless `generated` is added to `filter_sources`.

Input columns: id, entity, entity_type, query_image, image_source. Output: every input column plus
`clip_score` (float32, cosine of the normalised image and text vectors). Dropped rows:
`filter:clip_score`, `error:no_query_image`, `error:image_<kind>` (the stored bytes are not a valid image:
io/images.decode_image's kinds). A failing store read is retried, then fails the shard (never a reject).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from pipeline.config import check, to_dict
from pipeline.io.image_store import ImageStore
from pipeline.io.images import ImageError, load_stored
from pipeline.models.clip import ClipConfig
from pipeline.prompts import load_sources, render
from pipeline.scheduling import Phase
from pipeline.stage import (
    FILTERED,
    OK,
    REJECTED,
    Resources,
    Stage,
    StageConfig,
    actor_map,
    actor_pool,
    set_status,
)

PROMPTS = ("clip_filter/text.j2",)
IMAGE_SOURCES = ("doc", "retrieved", "generated")


@dataclass(frozen=True)
class ClipFilterConfig(StageConfig):
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)
    threshold: float = 0.2
    # Image sources the threshold applies to; the others are scored and kept.
    filter_sources: tuple[str, ...] = ("retrieved",)
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(batch_size=32, shard_rows=256))

    def __post_init__(self) -> None:
        check(-1.0 <= self.threshold <= 1.0, "clip_filter", "threshold", f"must be in -1..1 (got {self.threshold})")
        bad = [s for s in self.filter_sources if s not in IMAGE_SOURCES]
        check(not bad, "clip_filter", "filter_sources", f"unknown source(s) {bad}; known: {', '.join(IMAGE_SOURCES)}")


def decide(score: float | None, source: str | None, cfg: ClipFilterConfig, error: str = "") -> tuple[str, str]:
    if error:
        return REJECTED, error
    if score is None:
        return REJECTED, "error:no_query_image"
    if source in cfg.filter_sources and score < cfg.threshold:
        return FILTERED, "filter:clip_score"
    return OK, ""


class ClipScoreFn:
    """Ray actor: loads the query images by reference, embeds them and their texts, scores, decides."""

    def __init__(self, model: str, cfg: dict, sources: dict, run_uri: str) -> None:
        from pipeline.models.clip import ClipModel

        self.cfg = ClipFilterConfig.from_dict(cfg)
        self.model = ClipModel(model, self.cfg.clip)
        self.sources = sources
        self.store = ImageStore.from_uri(run_uri)

    def __call__(self, table: pa.Table) -> pa.Table:
        refs = table["query_image"].to_pylist()
        srcs = table["image_source"].to_pylist()
        captions = table["image_prompt"].to_pylist() if "image_prompt" in table.column_names else [None] * len(refs)
        errors = [""] * len(refs)
        images, todo = [], []
        for i, ref in enumerate(refs):
            if ref is None:
                continue
            # Only bytes that are not a valid image cost their row; a failing read propagates (R35).
            try:
                images.append(load_stored(self.store, ref))
                todo.append(i)
            except ImageError as exc:
                errors[i] = f"error:image_{exc.kind}"
        texts = [render(self.sources[PROMPTS[0]], PROMPTS[0], entity=row_e or "", entity_type=row_t or "",
                        caption=captions[i]) for i, row_e, row_t in
                 ((i, table["entity"][i].as_py(), table["entity_type"][i].as_py()) for i in todo)]
        scores: list[float | None] = [None] * len(refs)
        if todo:
            sims = np.sum(self.model.encode_images(images) * self.model.encode_texts(texts), axis=1)
            for i, s in zip(todo, sims):
                scores[i] = float(s)
        decided = [decide(s, src, self.cfg, e) for s, src, e in zip(scores, srcs, errors)]
        table = table.append_column("clip_score", pa.array(scores, pa.float32()))
        return set_status(table, [d[0] for d in decided], [d[1] for d in decided])


class ClipFilter(Stage):
    name: ClassVar[str] = "clip_filter"
    config_cls: ClassVar[type] = ClipFilterConfig
    input_columns: ClassVar[tuple[str, ...]] = ("id", "entity", "entity_type", "query_image", "image_source")
    output_columns: ClassVar[tuple[str, ...]] = ("clip_score",)
    prompt_files: ClassVar[tuple[str, ...]] = PROMPTS

    def prepare(self) -> None:
        from pipeline.models.clip import open_clip_name

        self.sources = load_sources(self.context.prompts_dir, self.prompt_files)
        render(self.sources[PROMPTS[0]], PROMPTS[0], entity="e", entity_type="t", caption=None)
        self.model_path, self.model_id = open_clip_name(self.config.clip.model, self.context.cache_dir)

    def models(self) -> dict[str, str]:
        pretrained = f", {self.config.clip.pretrained}" if self.config.clip.pretrained else ""
        return {"clip": f"{self.model_id} (open_clip{pretrained})"}

    def schedule(self) -> tuple[Phase, ...]:
        return (Phase(self.name, (actor_pool("ClipScoreFn", self.config.resources, self.name),)),)

    def apply(self, ds):
        kwargs = {"model": self.model_path, "cfg": to_dict(self.config), "sources": self.sources,
                  "run_uri": self.context.run_uri}
        return actor_map(ds, ClipScoreFn, kwargs, self.config.resources)
