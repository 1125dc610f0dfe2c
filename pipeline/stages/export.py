"""export: write the last stage's rows as the run's output under RUN_DIR/export/data/.

`schema: gme` (default) writes the GME fused triplets of DESIGN §4 (pipeline/triplets.py: inputs
`GME_INPUTS` from the `negatives` stage, output `GME_COLUMNS`), split by passage into
`data/train-*.parquet` and `data/validation-*.parquet` (`validation_ratio`, `split_seed`; a seeded
hash of the doc id decides, so no doc id is in both and the split does not depend on sharding).
Rows whose passage or query overlaps the evaluation texts of `contamination.eval_files` are dropped
as `filter:contamination` (pipeline/text/contamination.py); rows without a query image, with
misaligned negative lists, or with their own passage among the negatives are dropped with a reason.
`schema: megapairs` writes the MegaPairs triplets (pipeline/triplets_megapairs.py: inputs `MP_INPUTS` from
the `instruct` stage; `id, q_img, q_text, t_img, hns` + provenance), split by query image the same way
(`query_id`), options under `megapairs:` (query-first negatives, `q_text`/`q_texts`, square resize).
`schema: passthrough` writes whatever the previous stage produced (id is required; the LLM's raw
text dropped with `drop_raw`), as the text-only track does.

Either way, image references (io/image_store.py) are materialised here, in the workers, as HF image
structs `{bytes, path}` (lists of references as lists of structs) on the rows of each part file just
before it is written (rejects keep the references), and the Parquet schema metadata
carries `datasets` features, so `datasets.load_dataset("parquet", data_dir=...)` yields PIL images in
every image column. Row groups hold at most `row_group_mb` of image bytes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import triplets_megapairs as mp
from pipeline.config import check, to_dict
from pipeline.io.image_store import HF_IMAGE, ImageStore, file_name, is_image_ref, is_image_ref_list
from pipeline.logging import get_logger
from pipeline.stage import (
    FILTERED,
    OK,
    REJECTED,
    SPLIT,
    BlockStep,
    Resources,
    Stage,
    StageConfig,
    check_columns,
    mark_all_ok,
    set_status,
)
from pipeline.text.contamination import ContaminationConfig, EvalNgrams, build_eval_set, eval_identity
from pipeline.text.contamination_images import rows_with_near_duplicates
from pipeline.triplets import GME_COLUMNS, GME_INPUTS, SPLITS, TASKS, gme_row_problems, split_of, to_gme_rows

log = get_logger(__name__)
SCHEMAS = ("gme", "megapairs", "passthrough")
TRIPLETS = ("gme", "megapairs")
CONTAMINATION = "filter:contamination"
# The upstream image columns the image contamination check reads: query, passage, negatives.
GME_IMAGE_COLUMNS = ("query_image", "image", "neg_images")


@dataclass(frozen=True)
class ExportConfig(StageConfig):
    # gme: the fused triplet schema (DESIGN §4); megapairs: MegaPairs triplets (§1b); passthrough: the previous stage's columns as they are.
    schema: str = "gme"
    # it2t: (image + text) query -> text passage; it2it: the passage keeps its own image.
    task: str = "it2t"
    # For rows whose upstream stages set no `instruction` (GME puts it in the query's system prompt).
    instruction: str = "Retrieve a passage that answers the question about the image."
    # Share of passages (by doc id) whose rows go to data/validation-*.parquet; 0 = all train.
    validation_ratio: float = 0.0
    split_seed: int = 0
    contamination: ContaminationConfig = dataclasses.field(default_factory=ContaminationConfig)
    megapairs: mp.MegaPairsExportConfig = dataclasses.field(default_factory=mp.MegaPairsExportConfig)
    # Image bytes per Parquet row group at most: `datasets` and the Hub viewer read a row group at a
    # time, and Arrow's int32 binary offsets overflow past 2 GiB in one column chunk.
    row_group_mb: int = 128
    # Drop the LLM's raw text from the published rows (passthrough; it stays in the stage folders).
    drop_raw: bool = True
    # A GME row carries ~10 images (query + negatives); 1000 rows keep a part file near 1-2 GB. A whole CPU:
    # the task reads the shard, materialises its images from the store and writes Parquet.
    resources: Resources = dataclasses.field(default_factory=lambda: Resources(shard_rows=1000, num_cpus=1.0))

    def __post_init__(self) -> None:
        check(self.schema in SCHEMAS, "export", "schema", f"must be one of {', '.join(SCHEMAS)} (got {self.schema!r})")
        check(self.task in TASKS, "export", "task", f"must be one of {', '.join(TASKS)} (got {self.task!r})")
        check(0 <= self.validation_ratio < 1, "export", "validation_ratio",
              f"must be in [0, 1) (got {self.validation_ratio})")
        check(self.row_group_mb >= 1, "export", "row_group_mb", f"must be >= 1 (got {self.row_group_mb})")

    def semantic_dict(self) -> dict:
        """The `megapairs:` options change only megapairs output: other schemas' fingerprints leave them out
        (a GME run made before they existed does not re-export)."""
        out = super().semantic_dict()
        if self.schema != "megapairs":
            out.pop("megapairs", None)
        return out


def is_image_struct(tp: pa.DataType) -> bool:
    return pa.types.is_struct(tp) and {tp.field(i).name for i in range(tp.num_fields)} == {"bytes", "path"}


def _is_image_list(tp: pa.DataType) -> bool:
    return (pa.types.is_list(tp) or pa.types.is_large_list(tp)) and is_image_struct(tp.value_type)


IMAGE_FEATURE = {"_type": "Image"}


def hf_features_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    """Schema metadata `datasets` reads: image structs become Image(), lists of them lists of Image(), in
    the spelling every `datasets` from 3.0 on reads (`portable_features`)."""
    from datasets import Features

    plain = pa.schema([f for f in schema if not is_image_struct(f.type) and not _is_image_list(f.type)])
    features = Features.from_arrow_schema(plain).to_dict()
    ordered = {}
    for field in schema:
        if is_image_struct(field.type):
            ordered[field.name] = IMAGE_FEATURE
        elif _is_image_list(field.type):
            ordered[field.name] = {"feature": IMAGE_FEATURE, "_type": "Sequence"}
        else:
            ordered[field.name] = features[field.name]
    info = {"info": {"features": portable_features(ordered)}}
    return {b"huggingface": json.dumps(info).encode()}


def portable_features(features):
    """A `Features.to_dict()` in the form `datasets` 3.x and 4+ both read.

    `datasets` 4.0 writes lists as `{"_type": "List"}`, a type 3.x does not know ("Feature type 'List'
    not found"), and ms-swift 3.x pins `datasets<4`. Both read `{"_type": "Sequence"}` (4+ turns it
    back into a List) and a JSON list `[feature]`; a list of structs takes the latter, since
    `Sequence({...})` means a struct of lists to both (the TFDS convention).
    """
    if isinstance(features, list):
        return [portable_features(f) for f in features]
    if not isinstance(features, dict):
        return features
    if features.get("_type") == "List":
        inner = portable_features(features["feature"])
        if isinstance(inner, dict) and "_type" not in inner:
            return [inner]
        length = features.get("length", -1)
        return {"feature": inner, **({"length": length} if length != -1 else {}), "_type": "Sequence"}
    return {k: portable_features(v) if k != "_type" else v for k, v in features.items()}


def _hf_images(refs: pa.Array, store: ImageStore, transform=None) -> pa.StructArray:
    """Reference structs -> HF image structs. Each distinct image is read once per block and built
    column-wise (a fan-out repeats references; Python dicts per row cost more than the reads);
    `transform(bytes) -> (bytes, ext)` re-encodes it (megapairs `image_size`)."""
    refs = refs.combine_chunks() if isinstance(refs, pa.ChunkedArray) else refs
    slot: dict[str, int] = {}
    blobs, names, take = [], [], []
    shas, formats = refs.field("sha256").to_pylist(), refs.field("format").to_pylist()
    for valid, sha, fmt in zip(refs.is_valid().to_pylist(), shas, formats):
        if not valid:
            take.append(None)
            continue
        if sha not in slot:
            ref = {"sha256": sha, "format": fmt}
            slot[sha] = len(blobs)
            data, name = store.get(ref), file_name(ref)
            if transform is not None:
                data, ext = transform(data)
                name = f"{name.rsplit('.', 1)[0]}.{ext}"
            blobs.append(data)
            names.append(name)
        take.append(slot[sha])
    distinct = pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), pa.array(names, pa.string())], fields=list(HF_IMAGE)
    )
    return distinct.take(pa.array(take, pa.int64()))


def materialise_images(table: pa.Table, store: ImageStore, transform=None) -> pa.Table:
    """Image reference columns -> HF image structs with the stored bytes (the only place bytes move)."""
    for i, field in enumerate(table.schema):
        if is_image_ref(field.type):
            table = table.set_column(i, field.name, _hf_images(table[field.name], store, transform))
        elif is_image_ref_list(field.type):
            lists = table[field.name].combine_chunks()
            offsets = pc.subtract(lists.offsets, lists.offsets[0])
            values = _hf_images(lists.flatten(), store, transform)
            column = pa.ListArray.from_arrays(offsets, values, mask=lists.is_null())
            table = table.set_column(i, field.name, column)
    return table


def export_batch(table: pa.Table, drop_raw: bool, run_uri: str | None = None) -> pa.Table:
    """passthrough: the rows as they came, LLM raw text dropped (image references materialised from
    the store at `run_uri` when given; the stage does it in `finish_part`)."""
    raw = [c for c in ("llm_raw", "entities_raw") if c in table.column_names]
    if drop_raw and raw:
        table = table.drop_columns(raw)
    if run_uri is not None:
        table = materialise_images(table, ImageStore.from_uri(run_uri))
    return table


def gme_batch(table: pa.Table, config: ExportConfig, eval_set: EvalNgrams | None = None,
              store: ImageStore | None = None) -> pa.Table:
    """gme: upstream rows -> triplet rows with `_status` / `_reason` and `_split` (one for one); image
    columns still hold references (`finish_part` materialises the kept rows'). `store` reads the images
    when the evaluation set holds images (`contamination.image_distance`)."""
    check_columns("export", GME_INPUTS, table.column_names)
    rows = to_gme_rows(table, config.task, config.instruction)
    reasons = gme_row_problems(table, rows)
    if eval_set is not None:
        reasons = contamination_reasons(table, reasons, eval_set, store)
    statuses = [OK if not r else FILTERED if r.startswith("filter:") else REJECTED for r in reasons]
    splits = [split_of(str(d), config.validation_ratio, config.split_seed) for d in table["doc_id"].to_pylist()]
    rows = rows.append_column(SPLIT, pa.array(splits, pa.string()))
    return set_status(rows, statuses, reasons)


def contamination_reasons(table: pa.Table, reasons: list[str], eval_set: EvalNgrams,
                          store: ImageStore | None = None) -> list[str]:
    """`filter:contamination` for rows (not already dropped) whose passage text, rewritten query or
    original query overlaps the evaluation set, or (evaluation images given) whose query image, passage
    image or a negative's image is a near-duplicate of an evaluation image."""
    fields = [c for c in ("text", "rewritten_query", "query") if c in table.column_names]
    values = zip(*(table[c].to_pylist() for c in fields))
    reasons = [r or (CONTAMINATION if any(eval_set.contaminated(t) for t in texts) else "")
               for r, texts in zip(reasons, values)]
    if store is None or not eval_set.checks_images:
        return reasons
    hits = rows_with_near_duplicates(table, GME_IMAGE_COLUMNS, store, eval_set, reasons)
    return [r or (CONTAMINATION if hit else "") for r, hit in zip(reasons, hits)]


def _export_block(table: pa.Table, drop_raw: bool) -> pa.Table:
    return mark_all_ok(export_batch(table, drop_raw))


# A worker process deserialises the evaluation set once, not once per block (it may hold millions of
# n-grams): object ref -> set.
_EVAL_SETS: dict[str, EvalNgrams] = {}


def _triplet_block(table: pa.Table, cfg: dict, eval_ref, models: str | None = None,
                   run_uri: str | None = None) -> pa.Table:
    eval_set = None
    if eval_ref is not None:
        import ray

        key = eval_ref.hex()
        if key not in _EVAL_SETS:
            _EVAL_SETS.clear()
            _EVAL_SETS[key] = ray.get(eval_ref)
        eval_set = _EVAL_SETS[key]
    config = ExportConfig.from_dict(cfg)
    store = ImageStore.from_uri(run_uri) if run_uri and eval_set is not None and eval_set.checks_images else None
    if config.schema == "megapairs":
        return mp.megapairs_batch(table, config.megapairs, config.validation_ratio, config.split_seed, eval_set, models,
                                  store)
    return gme_batch(table, config, eval_set, store)


class Export(Stage):
    name: ClassVar[str] = "export"
    config_cls: ClassVar[type] = ExportConfig
    input_columns: ClassVar[tuple[str, ...]] = GME_INPUTS
    output_columns: ClassVar[tuple[str, ...]] = GME_COLUMNS
    # `datasets` and the Hub infer the split from the file name: data/train-*.parquet -> "train".
    part_prefix: ClassVar[str] = "train"

    def __init__(self, config: ExportConfig, context, section: str | None = None) -> None:
        super().__init__(config, context, section)
        if config.schema == "passthrough":
            # The columns depend on the schema: the static chain check (R6) asks only for an id.
            self.input_columns, self.output_columns = ("id",), ()
        elif config.schema == "megapairs":
            self.input_columns, self.output_columns = mp.MP_INPUTS, mp.mp_columns(config.megapairs.text_field)
        self._eval_set: EvalNgrams | None = None
        self._eval_ref = None
        self._models: str | None = None

    def __getstate__(self) -> dict:
        # The stage object travels to every write task; the evaluation set goes once, via the object store.
        return {**self.__dict__, "_eval_set": None, "_eval_ref": None}

    def prepare(self) -> None:
        """Read and index the evaluation files now: a bad one stops the run before any work."""
        if self.config.schema in TRIPLETS and self.config.contamination.eval_files:
            self._eval_set = build_eval_set(self.config.contamination)
            log.info("export: contamination check against %d evaluation texts (%d %d-grams)",
                     self._eval_set.texts, len(self._eval_set.ngrams), self._eval_set.n)

    def before_execute(self, ctx) -> None:
        """megapairs: the earlier sections' model ids from their manifests (complete by now), for the
        rows' `models` column (a changed model changes their fingerprints, so export re-runs)."""
        if self.config.schema == "megapairs":
            from pipeline.status import collect_manifests

            self._models = mp.run_models(collect_manifests(ctx.run_fs))

    def input_identity(self) -> dict:
        files = self.config.contamination.eval_files if self.config.schema in TRIPLETS else ()
        return eval_identity(tuple(files)) if files else {}

    def part_prefixes(self) -> tuple[str, ...]:
        return SPLITS if self.config.schema in TRIPLETS else (self.part_prefix,)

    def row_group_bytes(self) -> int | None:
        return self.config.row_group_mb * 2**20

    def task_steps(self) -> list[BlockStep]:
        if self.config.schema == "passthrough":
            return [BlockStep(_export_block, {"drop_raw": self.config.drop_raw})]
        if self._eval_set is not None and self._eval_ref is None:
            import ray

            self._eval_ref = ray.put(self._eval_set)
        run_uri = self.context.run_uri if self.context is not None else None
        return [BlockStep(_triplet_block, {"cfg": to_dict(self.config), "eval_ref": self._eval_ref,
                                           "models": self._models, "run_uri": run_uri})]

    def finish_part(self, table: pa.Table) -> pa.Table:
        """Image references -> HF image structs with the stored bytes, then the `datasets` features.

        Here, on the rows of one part file just before it is written, and not earlier: the writer
        sorts and splits rows by shard, status and split, and every such copy of a materialised table
        copies its image bytes (bench/export.py, 1000 rows of 10 images: 21 s before, 4.3 s here).
        """
        opts = self.config.megapairs
        resize = mp.square_jpeg(opts.image_size, opts.resize_mode, opts.jpeg_quality) if (
            self.config.schema == "megapairs" and opts.image_size) else None
        if self.context is not None:
            table = materialise_images(table, ImageStore.from_uri(self.context.run_uri), resize)
        meta = hf_features_metadata(table.schema)
        return table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})


@dataclass(frozen=True)
class MegaPairsExportConfig(ExportConfig):
    """The megapairs track's `export:` section: the same knobs, `schema: megapairs` by default."""

    schema: str = "megapairs"


class MegaPairsExport(Export):
    """Export under the megapairs track (tracks.py): MegaPairs triplets unless the config says otherwise."""

    config_cls: ClassVar[type] = MegaPairsExportConfig
    input_columns: ClassVar[tuple[str, ...]] = mp.MP_INPUTS
    output_columns: ClassVar[tuple[str, ...]] = mp.mp_columns("q_text")
