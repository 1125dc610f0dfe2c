"""gme_score: score each fused query against its positive passage with GME and keep the pairs GME
itself finds related (GME §1a row 7). The fused query is the entity-masked rewrite plus the entity's
image under the task instruction; the positive is the passage (title + text, and its own image when it
has one), encoded as a GME candidate. With `top_k` > 0 the positive must also rank within the top k
when the query searches the whole GME passage pool (the `gme` index, shared with negatives).

Input columns: id, doc_id, text, title, image, rewritten_query, query_image. Output: every input
column plus `instruction` (the task instruction the query was encoded under), `gme_pos_score`
(float32 cosine of query and positive; null when the query could not be encoded) and `gme_pos_rank`
(int32 1-based rank of the positive in the pool search; null when `top_k` is 0 or it is not in the
top k). Dropped rows: `error:no_query_image`, `error:image_<kind>` (io/images.decode_image), GME image errors
(`error:image_too_small`...), `error:source_not_in_pool` (with `top_k`: the doc_id is no pooled
passage), `filter:empty_query`, `filter:gme_score` (below `threshold`), `filter:gme_rank` (not in the
top k).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa

from pipeline.config import check, to_dict
from pipeline.errors import PipelineConfigError
from pipeline.io.index_config import RENAMED_KEYS, IndexConfig
from pipeline.io.indexes import IndexHandle, IndexSpec
from pipeline.models.gme import GmeConfig
from pipeline.models.text_embed import TextEmbedConfig
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
from pipeline.stages import gme_pool
from pipeline.stages.consistency import source_ranks, text_pool_spec

INSTRUCTION_FILE = "gme_score/instruction.txt"
EMBEDDERS = ("gme", "text")


def check_embedder(stage: str, embedder: str, gme: GmeConfig) -> None:
    """The `embedder` switch shared by gme_score and negatives."""
    check(embedder in EMBEDDERS, stage, "embedder", f"must be one of {EMBEDDERS} (got {embedder!r})")
    check(
        embedder == "gme" or gme.backend == "transformers",
        stage,
        "embedder",
        f"is text: the text embedder stands in for GME, so gme.backend ({gme.backend}) would be unused; "
        "set embedder: gme to embed with GME through that backend",
    )


@dataclass(frozen=True)
class GmeScoreConfig(StageConfig):
    RENAMED: ClassVar[dict[str, str]] = RENAMED_KEYS

    gme: GmeConfig = dataclasses.field(default_factory=GmeConfig)
    # gme: queries and candidates through `gme`. text: `text_embedder` stands in for GME (the demo, whose
    # GME is a random tiny model): the query the rewrite came from (`query`, entity named) against the
    # passages' text, over the same text pool as consistency; `gme_pos_score` is then that cosine.
    embedder: Literal["gme", "text"] = "gme"
    text_embedder: TextEmbedConfig = dataclasses.field(default_factory=TextEmbedConfig)
    # The query's task instruction; None reads prompts/gme_score/instruction.txt (in the fingerprint).
    instruction: str | None = None
    # Cosine floor for (fused query, positive). Real GME (gme-Qwen2-VL 2B/7B) puts matching
    # query-passage pairs mostly around 0.35-0.6 and unrelated ones below ~0.2, so 0.3 drops pairs
    # whose image or rewrite lost the link to the passage. Random tiny models score near 0: the demo
    # config lowers it.
    threshold: float = 0.3
    # 0 = off; k > 0 also requires the positive within the top k of a search over the whole pool.
    top_k: int = 0
    # Candidates (positive and pool) carry the passage's own image when it has one; false: text only,
    # the IT->T task. With an image_source `doc` row the query's image is that same image, which lifts
    # its score: compare thresholds per image_source, or turn this off for IT->T data.
    passage_images: bool = True
    # The GME pool's index (only used when top_k > 0): `flat` is exact; `ivf` is approximate and faster
    # on big pools. kind and nlist must match negatives' for the two stages to share one pool.
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(batch_size=8, shard_rows=256))

    def __post_init__(self) -> None:
        check(
            -1.0 <= self.threshold <= 1.0,
            "gme_score",
            "threshold",
            f"must be in [-1, 1] (got {self.threshold})",
        )
        check(self.top_k >= 0, "gme_score", "top_k", f"must be >= 0, 0 = off (got {self.top_k})")
        check_embedder("gme_score", self.embedder, self.gme)
        check(
            self.instruction is None or bool(self.instruction.strip()),
            "gme_score",
            "instruction",
            "must not be empty (null reads prompts/gme_score/instruction.txt)",
        )


def decide(
    query: str,
    image_reason: str,
    in_pool: bool,
    score: float | None,
    rank: int | None,
    threshold: float,
    top_k: int,
) -> tuple[str, str]:
    """(status, reason) of one row; `in_pool` is True when no pool is used (top_k 0)."""
    if not query.strip():
        return FILTERED, "filter:empty_query"
    if image_reason:
        return REJECTED, image_reason
    if not in_pool:
        return REJECTED, "error:source_not_in_pool"
    if score is None or score < threshold:
        return FILTERED, "filter:gme_score"
    if top_k and rank is None:
        return FILTERED, "filter:gme_rank"
    return OK, ""


def load_instruction(prompts_dir, configured: str | None, stage: str) -> str:
    """The configured instruction, else the text of prompts/gme_score/instruction.txt."""
    from pipeline.prompts import load_sources

    if configured is not None:
        return configured.strip()
    text = load_sources(prompts_dir, (INSTRUCTION_FILE,))[INSTRUCTION_FILE].strip()
    if not text:
        raise PipelineConfigError(
            f"{stage}: prompts/{INSTRUCTION_FILE} is empty; write the task instruction there"
        )
    return text


class GmeQueryFn:
    """Ray actor base of gme_score and negatives: the GME model loaded once, the shard's fused queries
    (rewrite + image, under the instruction) encoded as both stages must encode them."""

    config_cls: ClassVar[type]

    def __init__(
        self, model_path: str, cfg: dict, run_uri: str, instruction: str, index: IndexHandle | None
    ) -> None:
        self.cfg = self.config_cls.from_dict(cfg)
        self.instruction = instruction
        # embedder text: a text embedder stands in for GME (the stage's `text_embedder`).
        self.text = self.cfg.embedder == "text"
        # gme.backend vllm: the vectors arrive in temporary columns, embedded before this actor (gme_pool).
        self.vllm = not self.text and self.cfg.gme.backend == "vllm"
        if self.text:
            from pipeline.models.text_embed import TextEmbedder

            self.embedder = TextEmbedder(model_path, self.cfg.text_embedder)
        else:
            self.embedder = None if self.vllm else gme_pool.load_embedder(model_path, self.cfg.gme)
        self.loader = gme_pool.ImageLoader(run_uri, self.cfg.gme)
        self.pool = index.open() if index is not None else None
        self.dim = index.dim if index is not None else None

    def encode_queries(self, table: pa.Table) -> tuple[list[str], np.ndarray, list[str]]:
        """(query texts, vectors, per-row image reason or "")."""
        queries = [q or "" for q in table["rewritten_query"].to_pylist()]
        refs = table["query_image"].to_pylist()
        if not self.text and not self.vllm:
            # The transformers path loads the images itself, and names a missing one.
            return queries, *gme_pool.encode_queries(
                self.embedder, self.loader, queries, refs, self.instruction, self.cfg.resources.batch_size
            )
        if self.text:
            # The fused query means the rewrite with its entity shown; in text, that is the query the
            # rewrite came from (the entity named). The image is not read.
            prefix = self.cfg.text_embedder.query_prefix
            texts = [prefix + (q or "") for q in table["query"].to_pylist()]
            vectors, reasons = self.embedder.encode(texts, self.cfg.resources.batch_size), [""] * len(refs)
        else:
            vectors, reasons = gme_pool.vectors_of(table, gme_pool.QUERY, self.dim)
        # A row without an image is no fused query, whichever way it was embedded.
        return queries, vectors, [
            "error:no_query_image" if ref is None else reason for ref, reason in zip(refs, reasons)
        ]

    def drop_temp(self, table: pa.Table) -> pa.Table:
        """The table without the vllm backend's temporary columns."""
        return gme_pool.drop_temp(table) if self.vllm else table


class GmeScoreFn(GmeQueryFn):
    """Ray actor: encodes each shard's fused queries (and positives, without a pool) and scores them."""

    config_cls: ClassVar[type] = GmeScoreConfig

    def __call__(self, table: pa.Table) -> pa.Table:
        n = table.num_rows
        queries, vectors, reasons = self.encode_queries(table)
        if self.pool is not None:
            sources = self.pool.rows_of(table["doc_id"].to_pylist())
        else:
            sources = [0] * n
        if self.vllm and self.pool is None:
            # The positive's own engine error (its image was sized before, so never an image reason).
            pos_reasons = gme_pool.vectors_of(table, gme_pool.POSITIVE)[1]
            reasons = [r or p for r, p in zip(reasons, pos_reasons)]
        live = [i for i in range(n) if queries[i].strip() and not reasons[i] and sources[i] is not None]
        scores: list[float | None] = [None] * n
        ranks: list[int | None] = [None] * n
        if live:
            positives = self._positives(table, live, sources)
            for i, s in zip(live, np.einsum("ij,ij->i", vectors[live], positives)):
                scores[i] = float(s)
            if self.cfg.top_k:
                _, hits = self.pool.search(vectors[live], self.cfg.top_k, self.cfg.index.nprobe)
                for i, r in zip(live, source_ranks(hits, [sources[i] for i in live])):
                    ranks[i] = r
        decided = [
            decide(
                queries[i],
                reasons[i],
                sources[i] is not None,
                scores[i],
                ranks[i],
                self.cfg.threshold,
                self.cfg.top_k,
            )
            for i in range(n)
        ]
        table = self.drop_temp(table)
        table = table.append_column("instruction", pa.array([self.instruction] * n, pa.string()))
        table = table.append_column("gme_pos_score", pa.array(scores, pa.float32()))
        table = table.append_column("gme_pos_rank", pa.array(ranks, pa.int32()))
        return set_status(table, [d[0] for d in decided], [d[1] for d in decided])

    def _positives(self, table: pa.Table, live: list[int], sources: list) -> np.ndarray:
        """The positives' vectors: from the pool when there is one (same inputs, already embedded),
        else encoded here."""
        if self.pool is not None:
            return np.stack([self.pool.vector(sources[i]) for i in live]).astype(np.float32)
        if self.vllm:
            return gme_pool.vectors_of(table.take(pa.array(live, pa.int64())), gme_pool.POSITIVE)[0]
        rows = table.take(pa.array(live, pa.int64()))
        loader = self.loader if self.cfg.passage_images else None
        step, out = self.cfg.resources.batch_size, []
        titles, texts, refs = (rows[c].to_pylist() for c in ("title", "text", "image"))
        for s in range(0, len(live), step):
            chunk = slice(s, s + step)
            inputs, _ = gme_pool.passage_inputs(loader, titles[chunk], texts[chunk], refs[chunk])
            out.append(self.embedder.encode(inputs))
        return np.concatenate(out).astype(np.float32)


# The models() role of a text embedder standing in for GME (the card names it so).
TEXT_STAND_IN = "text_embedder (stands in for GME)"


class GmeStage(Stage):
    """What gme_score and negatives share: the GME model, the query instruction and the GME pool."""

    def needs_positives(self) -> bool:
        """Whether the actors embed the positives themselves (no pool to read them from)."""
        return not self.indexes()

    prompt_files: ClassVar[tuple[str, ...]] = (INSTRUCTION_FILE,)
    # The stage's actor class: (model_path, cfg, run_uri, instruction, index) -> table in, table out.
    actor: ClassVar[type]

    def __init__(self, config, context, section: str | None = None) -> None:
        super().__init__(config, context, section)
        if self.text_mode():
            # The text stand-in reads the query the rewrite came from.
            self.input_columns = (*type(self).input_columns, "query")

    def text_mode(self) -> bool:
        """Whether the stage's text embedder stands in for GME (`embedder: text`)."""
        return self.config.embedder == "text"

    def prepare(self) -> None:
        from pipeline.models.sources import resolve_model

        model, role = (
            (self.config.text_embedder.model, "text_embedder") if self.text_mode() else (self.config.gme.model, "gme")
        )
        self.model_path, self.model_id = resolve_model(model, self.context.cache_dir, None, f"{self.name}.{role}")
        self.instruction = load_instruction(self.context.prompts_dir, self.config.instruction, self.name)

    def models(self) -> dict[str, str]:
        if self.text_mode():
            # Named for what it is: the card says the GME columns hold this model's text cosines.
            return {TEXT_STAND_IN: self.model_id}
        backend = self.config.gme.backend
        return {"gme": self.model_id if backend == "transformers" else f"{self.model_id} via {backend}"}

    def uses_pool(self) -> bool:
        """Whether the stage declares the GME passage pool index."""
        return True

    def indexes(self) -> tuple[IndexSpec, ...]:
        """The GME passage pool (`uses_pool`): one index for both stages when their GME candidate
        settings agree."""
        return (self.pool_spec(self.model_path, self.model_id),) if self.uses_pool() else ()

    def pool_spec(self, model_path: str, model_id: str) -> IndexSpec:
        cfg = self.config
        if self.text_mode():
            return text_pool_spec(cfg.text_embedder, model_path, model_id, cfg.index, cfg.resources, self.context)
        return gme_pool.pool_spec(
            self.name, cfg.gme, model_path, model_id, cfg.passage_images,
            cfg.index.kind, cfg.index.nlist, cfg.resources, self.context,
        )

    def schedule(self) -> tuple[Phase, ...]:
        """The GME pool index's build (when declared), then the stage's actors."""
        pool = self.pool_spec("", "").embed.schedule() if self.uses_pool() else ()
        return (*pool, Phase(self.name, (actor_pool(type(self).actor.__name__, self.config.resources, self.name),)))

    def apply(self, ds):
        cfg = self.config
        resources = cfg.resources
        if not self.text_mode() and cfg.gme.backend == "vllm":
            from pipeline.models.vllm_backend import CPU_HELPER_CPUS

            run_uri = self.context.run_uri
            ds = gme_pool.embed_queries(ds, cfg.gme, self.model_path, self.instruction, resources, self.name, run_uri)
            if self.needs_positives():
                # A second engine beside the first (without top_k there is no pool to read positives from).
                ds = gme_pool.embed_candidates(
                    ds, cfg.gme, self.model_path, cfg.passage_images, resources, self.name, run_uri
                )
            # The actors only score, search and mine: light beside the engine, which holds the stage's CPUs
            # (a whole CPU each would leave a 2-CPU cluster no room for the engine's helpers).
            resources = dataclasses.replace(resources, num_cpus=CPU_HELPER_CPUS, num_gpus=0.0)
        kwargs = {
            "model_path": self.model_path,
            "cfg": to_dict(self.config),
            "run_uri": self.context.run_uri,
            "instruction": self.instruction,
            "index": self.bound_indexes.get("text" if self.text_mode() else "gme"),
        }
        return actor_map(ds, type(self).actor, kwargs, resources)


class GmeScore(GmeStage):
    name: ClassVar[str] = "gme_score"
    config_cls: ClassVar[type] = GmeScoreConfig
    input_columns: ClassVar[tuple[str, ...]] = (
        "id",
        "doc_id",
        "text",
        "title",
        "image",
        "rewritten_query",
        "query_image",
    )
    output_columns: ClassVar[tuple[str, ...]] = ("instruction", "gme_pos_score", "gme_pos_rank")
    actor: ClassVar[type] = GmeScoreFn

    def uses_pool(self) -> bool:
        """The GME passage pool only when the rank check is on; the text pool always with the text
        stand-in (the positives' vectors are read from it, and consistency built it already)."""
        return bool(self.config.top_k) or self.text_mode()
