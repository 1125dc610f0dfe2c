"""VLM2Vec / MMEB-train (and mmE5, same columns): Parquet per split plus `OUT/images/`.

MMEB-train rows (TIGER-Lab/MMEB-train; read by VLM2Vec's `TrainTextImageDataset` and
`load_mmeb_dataset` in src/data/dataset/mmeb_dataset.py) are six strings:

    qry, qry_image_path, pos_text, pos_image_path, neg_text, neg_image_path

with the Phi-3-V image token inline where the side has an image (`"<|image_1|>\\n" + text`; VLM2Vec
swaps it for its backbone's token) and "" for no image / no negative. A row holds one negative
(`neg_text` is a string), the hardest; `--negatives 0` leaves it empty, `--negatives 1` drops rows
without one. The query text is `instruction + " " + query`, as MMEB writes its instructions.

Layout: `OUT/fusegen/original-00000.parquet` (train; VLM2Vec's default `dataset_split` is "original")
and `OUT/fusegen/validation-00000.parquet`, with `OUT/README.md` declaring the `fusegen` config, so
`datasets.load_dataset(OUT, "fusegen", split="original")` is what the loader calls with
`--dataset_name OUT --subset_name fusegen` (VLM2Vec's first release) or a `--dataset_config` YAML entry
(`dataset_parser: mmeb`, `dataset_name`, `subset_name`, `dataset_split`, `image_dir`, `num_sample_per_subset`,
`weight`; OUT/README.md shows it); image paths are relative to OUT (`image_dir: OUT`).
Rows also carry `id`, `doc_id`, `neg_doc_id`, `query_id`, which the loaders never read (`fusegen validate` does).

MegaPairs runs (triplets_megapairs.py `as_triplets`): `qry` = `<|image_1|>\n` + instruction with the
query image, `pos_text` = `<|image_1|>\nRepresent the given image.` (MMEB's text for image candidates)
with the target image, and the hardest mined negative the same way, never the query image itself
(the `hns` entry `query_first` puts there); one row per pair (its first instruction) or, with
`--instructions all`, one per (pair, instruction), ids `<id>#<k>`; `query_id` set (null for GME rows).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.exporters.outdir import OutDir
from pipeline.exporters.source import Negatives, RunSource
from pipeline.exporters.view import Candidate, Img, Problems, Triplet

TOKEN = "<|image_1|>"
CONFIG = "fusegen"
SPLIT_NAMES = {"train": "original", "validation": "validation"}
COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path")
SCHEMA = pa.schema([(c, pa.string()) for c in (*COLUMNS, "id", "doc_id", "neg_doc_id", "query_id")])
# The text MMEB-train gives an image-only candidate.
IMAGE_CANDIDATE = "Represent the given image."
BATCH = 1024


def _side(text: str | None, image: str | None) -> tuple[str, str]:
    return (f"{TOKEN}\n{text or ''}" if image else text or ""), image or ""


def record(row: dict, out: OutDir, negs: tuple) -> dict:
    neg_ids, neg_texts, neg_images = negs
    instruction = (row.get("instruction") or "").strip()
    query = f"{instruction} {row['query_text']}" if instruction else row["query_text"]
    qry, qry_path = _side(query, out.image(row["query_image"]))
    pos, pos_path = _side(row["pos_text"], out.image(row["pos_image"]))
    neg, neg_path = _side(neg_texts[0], out.image(neg_images[0])) if neg_ids else ("", "")
    return {
        "qry": qry, "qry_image_path": qry_path, "pos_text": pos, "pos_image_path": pos_path,
        "neg_text": neg, "neg_image_path": neg_path,
        "id": row["id"], "doc_id": row["doc_id"], "neg_doc_id": neg_ids[0] if neg_ids else "",
        "query_id": row.get("query_id"),
    }


def readme(splits: list[str], folder: str, rows: int) -> str:
    """The folder's README: the `configs` `load_dataset(OUT, "fusegen")` reads, then how to train on it.

    VLM2Vec (TIGER-AI-Lab/VLM2Vec) trains from `train.py --dataset_config <yaml>`: one entry per dataset
    with the keys of experiments/public/train/train_image.yaml, read by `load_mmeb_dataset`
    (src/data/dataset/mmeb_dataset.py: `load_dataset(dataset_name, subset_name, split=dataset_split)`,
    `num_sample_per_subset`, images at `os.path.join(image_dir, path)`) and `init_mixed_dataset`
    (src/data/loader/mixed_dataset.py: `weight`). Its first release took the same as command-line flags.
    """
    files = "".join(
        f"  - split: {SPLIT_NAMES.get(s, s)}\n    path: {CONFIG}/{SPLIT_NAMES.get(s, s)}-*.parquet\n" for s in splits
    )
    entry = {"dataset_parser": "mmeb", "dataset_name": folder, "subset_name": CONFIG, "dataset_split": "original",
             "image_dir": folder, "num_sample_per_subset": rows, "weight": 1}
    return (
        f"---\nconfigs:\n- config_name: {CONFIG}\n  data_files:\n{files}---\n\n"
        "MMEB-train-style rows written by `fusegen export --format mmeb`. The MMEB layout keeps one hard\n"
        "negative per row (`neg_text` / `neg_image_path` are strings, VLM2Vec reads one), the run's hardest;\n"
        "for all of a row's negatives export `--format ms-swift` or `--format mbeir`.\n\n"
        "Train with VLM2Vec: an entry in the YAML file `train.py --dataset_config` reads (the paths are where\n"
        "this folder was written; change them if you move it):\n\n"
        f"```yaml\n{yaml.safe_dump({CONFIG: entry}, sort_keys=False, indent=4)}```\n\n"
        "VLM2Vec's first release (command-line flags, no `--dataset_config`):\n"
        f"`--dataset_name {shlex.quote(folder)} --subset_name {CONFIG} --dataset_split original "
        f"--image_dir {shlex.quote(folder)}`.\n"
    )


def write(source: RunSource, out: OutDir, negatives: Negatives, instructions: str = "first") -> dict:
    counts = {}
    for split in source.splits:
        read = written = dropped = 0

        def fill(f, split: str = split) -> None:
            nonlocal read, written, dropped
            with pq.ParquetWriter(f, SCHEMA, compression="zstd") as writer:
                batch: list[dict] = []
                for _, rows in source.triplets(split, instructions, query_negative=False,
                                               candidate_text=IMAGE_CANDIDATE):
                    read += 1
                    for row in rows:
                        negs = negatives.take(row)
                        if negs is None:
                            dropped += 1
                        else:
                            batch.append(record(row, out, negs))
                    if len(batch) >= BATCH:
                        writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))
                        written, batch = written + len(batch), []
                writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))
                written += len(batch)

        out.write_with(f"{CONFIG}/{SPLIT_NAMES.get(split, split)}-00000.parquet", fill)
        counts[split] = {"read": read, "written": written, "dropped": dropped}
    train = counts.get("train", {}).get("written", 0)
    out.write_text("README.md", readme(list(source.splits), out.path, train))
    return counts


# -- reading back (fusegen validate), the way VLM2Vec does ----------------------------------------


def _candidate(text: str, path: str, doc_id: str | None, where: str, root: str, problems: Problems) -> Candidate:
    tokens = text.count(TOKEN)
    if tokens != (1 if path else 0):
        problems.add(where, f"{tokens} {TOKEN} token(s) with image path {path!r}")
    body = text.replace(f"{TOKEN}\n", "").replace(TOKEN, "")
    return Candidate(doc_id, body, Img.at(root, path, where) if path else None)


def read(root: str, problems: Problems) -> Iterator[Triplet]:
    splits = {v: k for k, v in SPLIT_NAMES.items()}
    folder = os.path.join(root, CONFIG)
    if not os.path.isfile(os.path.join(root, "README.md")):
        problems.add("README.md", f"missing: `load_dataset(OUT, {CONFIG!r})` needs its configs")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".parquet"):
            continue
        table = pq.read_table(os.path.join(folder, name))
        bad = [c for c in COLUMNS if c not in table.column_names or not pa.types.is_string(table.schema.field(c).type)]
        if bad:
            problems.add(name, f"column(s) {bad} missing or not strings")
            continue
        split = splits.get(name.split("-", 1)[0], name.split("-", 1)[0])
        for no, row in enumerate(table.to_pylist()):
            where = f"{CONFIG}/{name}#row{no}"
            query = _candidate(row["qry"] or "", row["qry_image_path"] or "", None, where, root, problems)
            pos = _candidate(row["pos_text"] or "", row["pos_image_path"] or "", row.get("doc_id"), where, root, problems)
            negs = []
            if row["neg_text"] or row["neg_image_path"]:
                negs = [_candidate(row["neg_text"] or "", row["neg_image_path"] or "", row.get("neg_doc_id"),
                                   where, root, problems)]
            yield Triplet(row.get("id"), split, query.text, query.image, pos, negs, where, row.get("query_id"))
