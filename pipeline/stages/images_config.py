"""The images stage's configuration and the columns it adds (pipeline/stages/images.py is the stage).

A leaf of the images stage: its pool index (stages/images_pool.py) and the stage import it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import pyarrow as pa

from pipeline.config import check
from pipeline.io.fetch_config import FetchConfig
from pipeline.io.image_pool import PoolConfig
from pipeline.io.image_store import IMAGE_REF
from pipeline.io.index_config import RENAMED_KEYS, IndexConfig
from pipeline.models.clip import ClipConfig
from pipeline.models.diffusion import DiffusionConfig
from pipeline.models.llm_config import LLMConfig
from pipeline.models.text_embed import TextEmbedConfig
from pipeline.stage import Resources, StageConfig

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
    RENAMED: ClassVar[dict[str, str]] = RENAMED_KEYS

    # `caption`: a text embedder over the pool's captions; `clip`: open_clip text tower vs image vectors.
    retriever: Literal["caption", "clip"] = "caption"
    # Images kept per row: 1 = one image per row; k > 1 = up to k rows per row (fan-out).
    top_k: int = 1
    # Neighbours fetched per query before duplicates and the score floor are applied.
    search_k: int = 20
    # Similarity floor (cosine); below it the attempt fails and the next source is tried. null = none.
    min_score: float | None = None
    # The image pool's index: `flat` (exact) or `ivf` (approximate, for pools of millions).
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)

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
    # `doc` gives the passage's own image only when the entity names the passage's subject (its title,
    # text/leak.same_subject): a query about Gaudí does not get the Sagrada Família's photo. false: the
    # passage's image whatever the entity (e.g. titles in another language than the entities).
    doc_subject_only: bool = True
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
