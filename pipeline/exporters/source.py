"""The finished run an exporter reads: its manifests, its triplet files, and the negatives policy.

`open_run` refuses a run that is not finished (naming the first stage whose manifest is not
`complete`) and an export that holds no triplets (`export.schema: passthrough`); `RunSource.schema`
says which triplets it holds, "gme" or "megapairs" (from the files' columns; run.yaml's
`export.schema` only names what was configured in the error), and `require(fmt, schemas)` lets a
format refuse a schema it cannot take. Rows are read a record batch at a time, so an exporter's
memory does not grow with the run.

`triplets(split, instructions)` gives every format one row shape: GME rows as they are, MegaPairs
rows (pipeline/triplets_megapairs.py `as_triplets`) as image query + instruction -> target image
with the `hns` as negatives, one per pair (`instructions="first"`) or one per (pair, instruction).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from pipeline.errors import ExportError
from pipeline.io.fs import RunFS
from pipeline.status import collect_manifests
from pipeline.triplets import GME_COLUMNS, SPLITS
from pipeline.triplets_megapairs import MP_REQUIRED, TEXT_FIELDS, as_triplets

SCHEMA_FORMATS = {"gme": ("gme", "ms-swift", "mmeb", "mbeir"), "megapairs": ("megapairs", "ms-swift", "mmeb")}

DATA = "export/data"
BATCH_ROWS = 256
_SPLIT_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-[^/]*\.parquet$")


@dataclass(frozen=True)
class RunSource:
    run_fs: RunFS
    # split -> part files (relative to the run dir), train first.
    splits: dict[str, list[str]]
    export_manifest: dict = field(default_factory=dict)
    # Which triplets the run's export holds: "gme" or "megapairs"; `text_field` is the megapairs
    # instruction-list column (q_text or q_texts).
    schema: str = "gme"
    text_field: str = "q_text"

    @property
    def root(self) -> str:
        return self.run_fs.root

    def require(self, fmt: str) -> None:
        """ExportError when format `fmt` cannot take this run's triplets."""
        if fmt not in SCHEMA_FORMATS[self.schema]:
            takes = ", ".join(f for f in SCHEMA_FORMATS[self.schema])
            raise ExportError(
                f"--format {fmt} cannot take this run's {self.schema} triplets (it holds export.schema="
                f"{self.schema}); formats for {self.schema} runs: {takes}"
            )

    def triplets(self, split: str, instructions: str = "first", query_negative: bool = True,
                 candidate_text: str = "") -> Iterator[tuple[dict, list[dict]]]:
        """(source row, its GME-shaped rows): GME rows as they are; MegaPairs rows as image query +
        instruction -> target image (triplets_megapairs.py `as_triplets`)."""
        if self.schema == "gme":
            for row in self.rows(split):
                yield row, [row]
            return
        for row in self.rows(split):
            yield row, as_triplets(row, self.text_field, instructions, query_negative, candidate_text)

    def rows(self, split: str, columns: list[str] | None = None) -> Iterator[dict]:
        """The split's triplet rows (image columns as HF structs with bytes), in file order."""
        for rel in self.splits.get(split, []):
            with self.run_fs.fs.open_input_file(self.run_fs.path(rel)) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=columns):
                    yield from batch.to_pylist()

    def fewest_negatives(self) -> int | None:
        """The smallest number of negatives a row has over every split (None: no rows), read a batch of
        the `neg_doc_ids` / `hn_ids` column at a time (nothing kept per row)."""
        least = None
        name = "neg_doc_ids" if self.schema == "gme" else "hn_ids"
        for files in self.splits.values():
            for rel in files:
                with self.run_fs.fs.open_input_file(self.run_fs.path(rel)) as f:
                    for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=[name]):
                        if batch.num_rows:
                            lengths = pc.list_value_length(batch.column(0)).fill_null(0)
                            low = pc.min(lengths).as_py()
                            least = low if least is None else min(least, low)
        return least


def split_files(run_fs: RunFS, folder: str = DATA) -> dict[str, list[str]]:
    """`<folder>/<split>-*.parquet` grouped by split, in SPLITS order, then any other split by name."""
    out: dict[str, list[str]] = {}
    for name in run_fs.listdir(folder, ".parquet"):
        m = _SPLIT_FILE.match(name)
        if m:
            out.setdefault(m.group("split"), []).append(f"{folder}/{name}")
    order = {s: i for i, s in enumerate(SPLITS)}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def open_run(run_dir: str) -> RunSource:
    """The run's GME or MegaPairs export, or ExportError saying why it cannot be exported yet."""
    run_fs = RunFS.from_uri(run_dir)
    if not run_fs.exists("run.yaml"):
        raise ExportError(f"{run_fs.root}: no run.yaml here; pass the run directory of a `fusegen run`")
    manifests = collect_manifests(run_fs)
    for m in manifests:
        if m.get("status") != "complete":
            raise ExportError(
                f"{run_fs.root}: the run is not finished: stage {m['stage']} is {m.get('status')!r}, not "
                f"complete (see `fusegen status {run_fs.root}`); finish it with `fusegen run`, then export"
            )
    splits = split_files(run_fs)
    if not splits:
        raise ExportError(f"{run_fs.root}: the export stage wrote no rows ({DATA}/ holds no <split>-*.parquet)")
    first = run_fs.path(next(iter(splits.values()))[0])
    names = pq.read_schema(first, filesystem=run_fs.fs).names
    export = next((m for m in manifests if m.get("stage") == "export"), {})
    missing = [c for c in GME_COLUMNS if c not in names]
    if not missing:
        return RunSource(run_fs, splits, export, "gme")
    text_field = next((f for f in TEXT_FIELDS if f in names), None)
    if text_field and all(c in names for c in MP_REQUIRED):
        return RunSource(run_fs, splits, export, "megapairs", text_field)
    schema = (yaml.safe_load(run_fs.read_bytes("run.yaml")) or {}).get("export", {}).get("schema", "?")
    raise ExportError(
        f"{run_fs.root}: its export holds no GME or MegaPairs triplets (missing GME column(s) {', '.join(missing)}; "
        f"export.schema was {schema!r}); re-run the export stage with `--set export.schema=gme` (GME track) or "
        "`--set export.schema=megapairs` (MegaPairs track)"
    )


@dataclass(frozen=True)
class Negatives:
    """Which negatives an exported row keeps: its `keep` hardest (None: all), and rows with fewer than
    `at_least` are dropped (counted in the export marker)."""

    keep: int | None
    at_least: int = 0

    def take(self, row: dict) -> tuple[list[str], list[str], list[dict | None]] | None:
        """(doc ids, texts, images) of the negatives kept, hardest first; None drops the row."""
        ids, texts = row["neg_doc_ids"] or [], row["neg_texts"] or []
        images = row["neg_images"] or [None] * len(ids)
        if len(ids) < self.at_least:
            return None
        end = len(ids) if self.keep is None else self.keep
        return ids[:end], texts[:end], images[:end]


def negatives_policy(source: RunSource, requested: int | None, default: str, cap: int | None = None) -> Negatives:
    """`requested` (the --negatives flag): every row keeps its N hardest, rows with fewer are dropped.
    Else the format's `default`: "min" (N = the smallest count in the run: every row has as many and
    none is dropped), "all" (as they are) or "one" (the hardest one where there is one)."""
    if requested is not None:
        if requested < 0:
            raise ExportError(f"--negatives must be >= 0 (got {requested})")
        if cap is not None and requested > cap:
            raise ExportError(f"--negatives {requested}: this format holds at most {cap} negative(s) per row")
        return Negatives(requested, requested)
    if default == "all":
        return Negatives(None)
    if default == "one":
        return Negatives(1)
    least = source.fewest_negatives() or 0
    return Negatives(least, least)
