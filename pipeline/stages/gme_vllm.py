"""gme.backend `vllm` for gme_score, negatives and their GME pool: the vectors come from vLLM's pooling
runner through `ray.data.llm` (models/vllm_embed.py, GME's sequential positions) before the stage's
actors run, instead of from a `GmeEmbedder` inside them.

The inputs are those of the transformers path (gme_pool.py), so both backends see the same GME inputs:
- the fused query: `rewritten_query` + `query_image` under the stage's instruction; the actors turn a
  null image into `error:no_query_image` as before, and an image or engine error into the row's reason;
- a candidate (pool row, or gme_score's positive without a pool): `title + " " + text`, with the
  passage's own image when `passage_images` is on and GME can take it, else text alone (`image_used`).
  Whether GME can take it is decided in a light map before the engine (`usable_image`), by the same
  loader as the transformers path.

The vectors travel to the actors in temporary columns (`QUERY`, `POSITIVE`), which the actors drop.
A pool row the engine failed on fails its shard (nothing half-embedded is committed; resume redoes it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.models.gme import GmeConfig
from pipeline.stage import Resources, glue_map

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
    from pipeline.stages.gme_pool import ImageLoader

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
    from pipeline.io.indexes import embedding_array
    from pipeline.stage import SHARD, SRC, mark_all_ok
    from pipeline.stages.gme_pool import POOL_SCHEMA, text_hash

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
