"""pipeline/exporters/mbeir.py: queries, pool and instructions loaded back as UniIR's MBEIRMainDataset
loads them (src/data/mbeir_dataset.py), checked field by field against the run's GME rows.

Followed here: the pool read into a dict by `did`; the instructions TSV with its header skipped and
keys "<dataset_id>, <query_modality>, <cand_modality>" from columns 3, 0, 1 and prompts from column
4 on; each query's positive looked up in the pool (evaluation keeps only positives of the query's
dataset id); images opened at `os.path.join(mbeir_data_dir, path)`; `hash_qid` / `hash_did`
(`dataset_id * 500000 + n`, `dataset_id * 10**7 + n`) on every id.
"""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from pipeline.exporters import export_run
from pipeline.exporters.mbeir import pool_file, query_file
from tests.support.gme_run import split_ids

QUERY_BOUND, CAND_BOUND = 500_000, 10_000_000


class MBEIR:
    """What MBEIRMainDataset builds from mbeir_data_dir for one split (train mode)."""

    def __init__(self, root: str, split: str) -> None:
        self.root = root
        with open(os.path.join(root, query_file(split)), encoding="utf-8") as f:
            self.queries = [json.loads(line) for line in f]
        with open(os.path.join(root, pool_file(split)), encoding="utf-8") as f:
            self.pool = {c["did"]: c for c in map(json.loads, f)}
        with open(os.path.join(root, "instructions", "query_instructions.tsv"), encoding="utf-8") as f:
            next(f)
            parts = [line.strip().split("\t") for line in f]
        self.prompts = {f"{p[3]}, {p[0]}, {p[1]}": [x for x in p[4:] if x] for p in parts}

    def image(self, path: str | None) -> bytes | None:
        if not path:
            return None
        full = os.path.join(self.root, path)
        Image.open(full).convert("RGB")
        with open(full, "rb") as f:
            return f.read()

    def item(self, q: dict) -> dict:
        dataset_id = q["qid"].split(":")[0]
        pos = self.pool[q["pos_cand_list"][0]]
        prompts = self.prompts[f"{dataset_id}, {q['query_modality']}, {pos['modality']}"]
        return {
            "query": (q["query_txt"], self.image(q["query_img_path"])), "prompts": prompts,
            "pos": (pos["txt"], self.image(pos["img_path"])),
            "negs": [(self.pool[d]["txt"], self.image(self.pool[d]["img_path"])) for d in q["neg_cand_list"]],
            "id": json.loads(q["query_src_content"])["id"],
        }


@pytest.fixture(scope="module")
def mbeir_out(gme_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("mbeir") / "out"
    export_run(str(gme_run), "mbeir", str(out))
    return str(out)


def image_bytes(struct: dict | None) -> bytes | None:
    return None if struct is None else struct["bytes"]


@pytest.mark.parametrize("split", ["train", "validation"])
def test_every_query_loads_with_its_text_image_positive_and_negatives(mbeir_out, gme_rows, split):
    data = MBEIR(mbeir_out, split)
    assert sorted(data.item(q)["id"] for q in data.queries) == split_ids(gme_rows, split)
    for q in data.queries:
        item = data.item(q)
        gme = gme_rows[item["id"]]
        assert (item["query"], item["pos"]) == (
            (gme["query_text"], image_bytes(gme["query_image"])), (gme["pos_text"], image_bytes(gme["pos_image"])),
        )
        assert item["negs"] == [(t, image_bytes(i)) for t, i in zip(gme["neg_texts"], gme["neg_images"])]


def test_the_row_instructions_are_the_prompts_uniir_draws(mbeir_out, gme_rows):
    data = MBEIR(mbeir_out, "train")
    assert set(data.item(data.queries[0])["prompts"]) == {r["instruction"] for r in gme_rows.values()}


def test_modalities_name_what_each_side_has(mbeir_out):
    data = MBEIR(mbeir_out, "train")
    assert ({q["query_modality"] for q in data.queries}, {c["modality"] for c in data.pool.values()}) == (
        {"image,text"}, {"image,text"},
    )


def test_qids_and_dids_hash_to_distinct_integers_as_uniir_hashes_them(mbeir_out):
    qids, dids = [], []
    for split in ("train", "validation"):
        data = MBEIR(mbeir_out, split)
        qids += [int(a) * QUERY_BOUND + int(b) for a, b in (q["qid"].split(":") for q in data.queries)]
        dids += [int(a) * CAND_BOUND + int(b) for a, b in (d.split(":") for d in data.pool)]
    assert len(set(qids)) == len(qids) and all(q // QUERY_BOUND >= 10 for q in qids)
    assert len(set(dids)) == len(dids)


def test_positives_share_the_query_dataset_id(mbeir_out):
    data = MBEIR(mbeir_out, "train")
    assert all(q["pos_cand_list"][0].split(":")[0] == q["qid"].split(":")[0] for q in data.queries)


def test_a_passage_used_by_many_queries_is_one_pool_entry(mbeir_out):
    data = MBEIR(mbeir_out, "train")
    docs = [json.loads(c["src_content"])["doc_id"] for c in data.pool.values()]
    assert len(docs) == len(set(docs))


def test_queries_past_the_per_id_bound_move_to_the_next_dataset_id(gme_run, tmp_path, monkeypatch):
    from pipeline.exporters import mbeir

    monkeypatch.setattr(mbeir, "QUERIES_PER_ID", 3)
    export_run(str(gme_run), "mbeir", str(tmp_path / "out"))
    data = MBEIR(str(tmp_path / "out"), "train")
    assert [q["qid"] for q in data.queries][:5] == ["10:0", "10:1", "10:2", "11:0", "11:1"]
    assert all(data.item(q)["prompts"] for q in data.queries)
