"""pipeline/exporters/mbeir.py: queries, pool and instructions loaded back as UniIR's MBEIRMainDataset
loads them (src/data/mbeir_dataset.py), checked field by field against the run's GME rows.

Followed here: the pool read into a dict by `did`; the instructions TSV with its header skipped and
keys "<dataset_id>, <query_modality>, <cand_modality>" from columns 3, 0, 1 and prompts from column
4 on; each query's positive looked up in the pool (evaluation keeps only positives of the query's
dataset id); images opened at `os.path.join(mbeir_data_dir, path)`; `hash_qid` / `hash_did`
(`dataset_id * 500000 + n`, `dataset_id * 10**7 + n`) on every id.

Evaluation, read from UniIR's source (TIGER-AI-Lab/UniIR at 98dc570c): the retriever opens
`os.path.join(qrel_dir, split, f"mbeir_{qrel_name}_{split}_qrels.txt")` (src/common/mbeir_retriever.py
line 397) and parses it with `load_qrel` (lines 169-185), reimplemented in `uniir_load_qrel` below; the
task of a query is `MBEIR_TASK[f"{query_modality} -> {cand_modality}"]` (src/data/preprocessing/utils.py
lines 21-31 and `get_mbeir_task_id`, lines 90-93), which `MBEIRMainDataset` computes from the query and
its positive (src/data/mbeir_dataset.py line 257).
"""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from pipeline.exporters import export_run, mbeir
from pipeline.exporters.mbeir import pool_file, query_file
from pipeline.exporters.outdir import MARKER, OutDir
from pipeline.exporters.source import negatives_policy, open_run
from pipeline.io.disk_keys import DiskKeys
from tests.support.gme_run import split_ids

QUERY_BOUND, CAND_BOUND = 500_000, 10_000_000
# UniIR's MBEIR_TASK, src/data/preprocessing/utils.py lines 21-31.
MBEIR_TASK = {
    "text -> image": 0, "text -> text": 1, "text -> image,text": 2, "image -> text": 3, "image -> image": 4,
    "image -> text,image": 5, "image,text -> text": 6, "image,text -> image": 7, "image,text -> image,text": 8,
}
UNIIR_SPLITS = {"train": "train", "validation": "val"}


def uniir_load_qrel(filename: str) -> tuple[dict, dict]:
    """UniIR's `load_qrel` (src/common/mbeir_retriever.py lines 169-185), statement for statement."""
    qrel, qid_to_taskid = {}, {}
    with open(filename) as f:
        for line in f:
            query_id, _, doc_id, relevance_score, task_id = line.strip().split()
            if int(relevance_score) > 0:
                if query_id not in qrel:
                    qrel[query_id] = []
                qrel[query_id].append(doc_id)
                if query_id not in qid_to_taskid:
                    qid_to_taskid[query_id] = task_id
    return qrel, qid_to_taskid


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


@pytest.mark.parametrize("run, task", [("gme_run", 8), ("it2t_run", 6)])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_uniir_reads_every_querys_positives_and_task_from_the_qrels(run, task, split, request, tmp_path):
    out = tmp_path / "out"
    export_run(str(request.getfixturevalue(run)), "mbeir", str(out))
    data, s = MBEIR(str(out), split), UNIIR_SPLITS[split]
    qrel, qid_to_taskid = uniir_load_qrel(os.path.join(out, "qrels", s, f"mbeir_fusegen_{s}_qrels.txt"))
    assert data.queries and set(qrel) == {q["qid"] for q in data.queries}
    for q in data.queries:
        pos = data.pool[q["pos_cand_list"][0]]
        uniir_task = MBEIR_TASK[f"{q['query_modality']} -> {pos['modality']}"]
        assert (q["task_id"], qid_to_taskid[q["qid"]], qrel[q["qid"]]) == (task, str(uniir_task), q["pos_cand_list"])


def test_task_ids_follow_uniirs_table_for_every_pair_of_modalities():
    spelled = {"image,text": "image,text", "image": "image", "text": "text"}
    for (query, cand), task in mbeir.TASK_IDS.items():
        name = f"{spelled[query]} -> {cand if (query, cand) != ('image', 'image,text') else 'text,image'}"
        assert MBEIR_TASK[name] == task


def _export_mbeir(run, out, seen_factory=None) -> dict[str, bytes]:
    source = open_run(str(run))
    target = OutDir(str(out), source.root, "mbeir", {})
    mbeir.write(source, target, negatives_policy(source, None, "all", None), seen_factory)
    target.finish({})
    files = {}
    for folder, _, names in os.walk(out):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                files[os.path.relpath(os.path.join(folder, name), out)] = f.read()
    return files


def test_the_on_disk_candidate_index_writes_what_an_in_memory_dict_writes(ragged_run, gme_run, tmp_path):
    for run in (gme_run, ragged_run):
        on_disk = _export_mbeir(run, tmp_path / f"{run.parent.name}-disk")
        in_memory = _export_mbeir(run, tmp_path / f"{run.parent.name}-dict", dict)
        on_disk.pop(MARKER), in_memory.pop(MARKER)
        assert on_disk == in_memory and any(n.startswith("cand_pool") for n in on_disk)
        assert not [n for n in on_disk if "sqlite" in n or n.endswith(".tmp")]


def test_the_did_index_numbers_a_candidate_once_and_bounds_its_cache(tmp_path):
    index = DiskKeys(str(tmp_path / "dids.sqlite"), cache_mib=1)
    for n in range(100_000):
        index[n.to_bytes(16, "big")] = f"10:{n}"
    assert (index.get((7).to_bytes(16, "big")), index.get((99_999).to_bytes(16, "big")), index.get(b"x" * 16)) == (
        "10:7", "10:99999", None)
    assert os.path.getsize(tmp_path / "dids.sqlite") > 2**20  # the keys spilled to disk past the 1 MiB cache
    index.close()
    assert not os.path.exists(tmp_path / "dids.sqlite")
