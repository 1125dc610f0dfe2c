"""M-BEIR (UniIR): query records, a candidate pool and query instructions, plus `OUT/images/`.

Read by UniIR's `MBEIRMainDataset` (src/data/mbeir_dataset.py) with `mbeir_data_dir=OUT`:

    query/train/mbeir_fusegen_train.jsonl, query/val/mbeir_fusegen_val.jsonl
        {qid, query_txt, query_img_path, query_modality, query_src_content, pos_cand_list, neg_cand_list,
         task_id}
    cand_pool/local/mbeir_fusegen_{train,val}_cand_pool.jsonl
        {did, txt, img_path, modality, src_content}
    instructions/query_instructions.tsv
        query_modality, cand_modality, dataset, dataset_id, prompt_1, ...   (one header line)
    qrels/train/mbeir_fusegen_train_qrels.txt, qrels/val/mbeir_fusegen_val_qrels.txt
        "<qid> 0 <did> 1 <task_id>", one line per positive

and evaluated by UniIR's retriever (src/common/mbeir_retriever.py: `load_qrel` splits each qrels line
into `query_id, _, doc_id, relevance_score, task_id` and reads `qrels/<split>/mbeir_<name>_<split>_qrels.txt`;
with `datasets_name: [fusegen]`, `correspond_cand_pools_name: [fusegen_val]`, `correspond_qrels_name:
[fusegen]` in its embed / retrieval configs). `task_id` is UniIR's `MBEIR_TASK` number for (query
modality -> positive modality), src/data/preprocessing/utils.py; the qrels lines are the ones UniIR's
own `mbeir_data_generator.py --generate_qrels` writes from a query row (`f"{qid} 0 {cand_id} 1 {task_id}"`).
An image-only query with an image+text positive is task 5, which UniIR spells "image -> text,image" and
calls not a valid task (its `get_mbeir_task_id` finds no task for "image -> image,text").

Ids are "<dataset_id>:<n>" as UniIR hashes them (`hash_qid` = id * 500000 + n, `hash_did` = id *
10^7 + n): UniIR's ten datasets use ids 0-9, fusegen starts at 10 and moves to the next id every
500000 queries, so hashed ids never collide; a group's candidates share its id (UniIR's evaluation
keeps only positives of the query's dataset id). Modalities are "text", "image" or "image,text"; image
paths are relative to OUT; `src_content` / `query_src_content` are JSON strings holding the fusegen ids
(`id`, `doc_id`). The loader prepends a prompt drawn from the instructions file to `query_txt`, so the
rows' instructions go there, keyed by (dataset id, query modality, candidate modality). Negatives: all
of a row's by default (UniIR samples `hard_neg_num` of them, wrapping around), or `--negatives N`.

The pool does not grow memory with the rows: query records, qrels lines and pool entries are written as
the rows arrive, and the candidates seen so far (for the numbering: a candidate keeps its first did) are
looked up in an SQLite table on disk beside the pool file (`DiskKeys`, a bounded page cache), not in a
dict (bench/mbeir_pool_memory.py). (`OutDir.images`, the names of the image files written, is a `DiskKeys`
every format shares.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator

from pipeline.exporters.outdir import OutDir
from pipeline.exporters.source import Negatives, RunSource
from pipeline.exporters.view import Candidate, Img, Problems, Triplet
from pipeline.io.disk_keys import DiskKeys

DATASET_ID = 10
QUERIES_PER_ID = 500_000
SPLIT_DIRS = {"train": "train", "validation": "val"}
INSTRUCTIONS = "instructions/query_instructions.tsv"
MODALITIES = ("text", "image", "image,text")
_ID = re.compile(r"^\d+:\d+$")
# UniIR's MBEIR_TASK (src/data/preprocessing/utils.py), keyed by (query modality, candidate modality) as
# this exporter spells them; UniIR's task 5 is "image -> text,image".
TASK_IDS = {
    ("text", "image"): 0, ("text", "text"): 1, ("text", "image,text"): 2,
    ("image", "text"): 3, ("image", "image"): 4, ("image", "image,text"): 5,
    ("image,text", "text"): 6, ("image,text", "image"): 7, ("image,text", "image,text"): 8,
}


def query_file(split: str) -> str:
    s = SPLIT_DIRS.get(split, split)
    return f"query/{s}/mbeir_fusegen_{s}.jsonl"


def pool_file(split: str) -> str:
    return f"cand_pool/local/mbeir_fusegen_{SPLIT_DIRS.get(split, split)}_cand_pool.jsonl"


def qrels_file(split: str) -> str:
    s = SPLIT_DIRS.get(split, split)
    return f"qrels/{s}/mbeir_fusegen_{s}_qrels.txt"


def task_id(query_modality: str, cand_modality: str) -> int:
    return TASK_IDS[(query_modality, cand_modality)]


def modality(text: str | None, image: str | None) -> str:
    return ",".join(m for m, present in (("image", image), ("text", text)) if present) or "text"


class _Pool:
    """Candidates of one split, each written once per dataset id and numbered as it first appears
    (`numbers` is shared by the splits' pools, so a did is unique across them: pools can be merged).
    `seen` maps a candidate's key to its did: a `DiskKeys` on disk unless given (the tests pass a dict)."""

    def __init__(self, out: OutDir, name: str, numbers: dict[int, int], seen=None) -> None:
        self.out, self.name = out, name
        self.next = numbers
        self.f = open(out.rel(name) + ".tmp", "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.seen = seen if seen is not None else DiskKeys(out.rel(name) + ".dids.sqlite")

    def did(self, dataset_id: int, doc_id: str, text: str, image: str | None) -> tuple[str, str]:
        key = hashlib.blake2b(json.dumps([dataset_id, doc_id, text, image]).encode(), digest_size=16).digest()
        did = self.seen.get(key)
        if did is None:
            n = self.next.get(dataset_id, 0)
            self.next[dataset_id] = n + 1
            did = f"{dataset_id}:{n}"
            self.seen[key] = did
            entry = {"did": did, "txt": text, "img_path": image, "modality": modality(text, image),
                     "src_content": json.dumps({"doc_id": doc_id}, ensure_ascii=False)}
            self.f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return did, modality(text, image)

    def close(self, keep: bool = True) -> None:
        """Close the index; the pool file takes its name when `keep` (else its partial copy goes)."""
        self.f.close()
        if isinstance(self.seen, DiskKeys):
            self.seen.close()
        if keep:
            os.replace(self.out.rel(self.name) + ".tmp", self.out.rel(self.name))
            self.out.files.append(self.name)
        else:
            os.remove(self.out.rel(self.name) + ".tmp")


def _queries(rows: Iterator[dict], pool: _Pool, qrels, out: OutDir, negatives: Negatives, prompts: dict,
             tally: dict) -> Iterator[dict]:
    """Query records of one split (their qrels lines into `qrels`); `tally` counts rows read and numbers
    queries across splits."""
    for row in rows:
        tally["read"] += 1
        negs = negatives.take(row)
        if negs is None:
            continue
        n = tally["queries"]
        dataset_id = DATASET_ID + n // QUERIES_PER_ID
        query_image = out.image(row["query_image"])
        pos, pos_modality = pool.did(dataset_id, row["doc_id"], row["pos_text"], out.image(row["pos_image"]))
        neg_dids = [pool.did(dataset_id, d, t, out.image(i))[0] for d, t, i in zip(*negs)]
        query_modality = modality(row["query_text"], query_image)
        prompts.setdefault((dataset_id, query_modality, pos_modality), set()).add(row.get("instruction") or "")
        tally["queries"] = n + 1
        qid, task = f"{dataset_id}:{n % QUERIES_PER_ID}", task_id(query_modality, pos_modality)
        qrels.write(f"{qid} 0 {pos} 1 {task}\n")
        yield {
            "qid": qid, "query_txt": row["query_text"],
            "query_img_path": query_image, "query_modality": query_modality,
            "query_src_content": json.dumps({"id": row["id"], "doc_id": row["doc_id"]}, ensure_ascii=False),
            "pos_cand_list": [pos], "neg_cand_list": neg_dids, "task_id": task,
        }


def write(source: RunSource, out: OutDir, negatives: Negatives, seen_factory=None) -> dict:
    """`seen_factory` (tests): makes each split's candidate index instead of a `DiskKeys` (e.g. `dict`)."""
    counts, prompts, tally, numbers = {}, {}, {"queries": 0}, {}
    for split in source.splits:
        for name in (pool_file(split), qrels_file(split)):
            os.makedirs(os.path.dirname(out.rel(name)), exist_ok=True)
        pool = _Pool(out, pool_file(split), numbers, seen_factory() if seen_factory else None)
        tally["read"] = 0
        try:
            with open(out.rel(qrels_file(split)) + ".tmp", "w", encoding="utf-8") as qrels:
                queries = _queries(source.rows(split), pool, qrels, out, negatives, prompts, tally)
                written = out.write_lines(query_file(split), queries)
        except BaseException:
            pool.close(keep=False)
            if os.path.exists(out.rel(qrels_file(split)) + ".tmp"):
                os.remove(out.rel(qrels_file(split)) + ".tmp")
            raise
        pool.close()
        os.replace(out.rel(qrels_file(split)) + ".tmp", out.rel(qrels_file(split)))
        out.files.append(qrels_file(split))
        counts[split] = {"read": tally["read"], "written": written}
    out.write_text(INSTRUCTIONS, instructions_tsv(prompts))
    return counts


def instructions_tsv(prompts: dict[tuple, set[str]]) -> str:
    lines = ["query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1"]
    for (dataset_id, query_modality, cand_modality), texts in sorted(prompts.items()):
        cells = [t.replace("\t", " ").replace("\n", " ") for t in sorted(texts) if t.strip()] or ["Retrieve a passage."]
        lines.append("\t".join([query_modality, cand_modality, "fusegen", str(dataset_id), *cells]))
    return "\n".join(lines) + "\n"


# -- reading back (fusegen validate), the way UniIR does --------------------------------------------


def _instruction_keys(root: str, problems: Problems) -> set[str]:
    path = os.path.join(root, INSTRUCTIONS)
    if not os.path.isfile(path):
        problems.add(INSTRUCTIONS, "missing: UniIR draws each query's prompt from it")
        return set()
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f.readlines()[1:] if line.strip()]
    return {f"{r[3]}, {r[0]}, {r[1]}" for r in rows if len(r) >= 5 and any(r[4:])}


def _pool(root: str, name: str, problems: Problems) -> dict[str, Candidate]:
    pool: dict[str, Candidate] = {}
    with open(os.path.join(root, name), encoding="utf-8") as f:
        for no, line in enumerate(f, start=1):
            where = f"{name}:{no}"
            c = problems.json_line(line, where)
            if c is None:
                continue
            did, text, image = c.get("did"), c.get("txt"), c.get("img_path")
            if not isinstance(did, str) or not _ID.match(did) or did in pool:
                problems.add(where, f"did {did!r} must be a unique '<dataset_id>:<n>'")
                continue
            if c.get("modality") not in MODALITIES or c.get("modality") != modality(text, image):
                problems.add(where, f"modality {c.get('modality')!r} does not match txt / img_path")
            doc = json.loads(c["src_content"]).get("doc_id") if c.get("src_content") else None
            pool[did] = Candidate(doc, text or "", Img.at(root, image, where) if image else None)
    return pool


def read(root: str, problems: Problems) -> Iterator[Triplet]:
    keys = _instruction_keys(root, problems)
    for split in SPLIT_DIRS:
        name = query_file(split)
        if not os.path.isfile(os.path.join(root, name)):
            continue
        if not os.path.isfile(os.path.join(root, pool_file(split))):
            problems.add(pool_file(split), "missing: the queries of this split point into it")
            continue
        pool = _pool(root, pool_file(split), problems)
        qrels = _qrels(root, qrels_file(split), problems)
        with open(os.path.join(root, name), encoding="utf-8") as f:
            for no, line in enumerate(f, start=1):
                where = f"{name}:{no}"
                q = problems.json_line(line, where)
                if q is not None:
                    t = _triplet(q, split, where, root, pool, keys, problems)
                    if t is not None:
                        _check_task(q, pool, qrels, where, problems)
                        yield t


def _qrels(root: str, name: str, problems: Problems) -> dict[str, tuple[list[str], str]] | None:
    """qid -> (relevant dids, task id) as UniIR's `load_qrel` reads them (five fields a line; relevance
    > 0 counts; the first line of a qid gives its task); None when the file is missing."""
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        problems.add(name, "missing: UniIR's retriever reads each query's positives and task from it")
        return None
    qrels: dict[str, tuple[list[str], str]] = {}
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, start=1):
            parts = line.split()
            if len(parts) != 5 or not parts[3].lstrip("-").isdigit():
                problems.add(f"{name}:{no}", "needs five fields '<qid> 0 <did> <relevance> <task_id>'")
                continue
            qid, _, did, relevance, task = parts
            if int(relevance) > 0:
                qrels.setdefault(qid, ([], task))[0].append(did)
    return qrels


def _check_task(q: dict, pool: dict[str, Candidate], qrels: dict | None, where: str, problems: Problems) -> None:
    """The query's `task_id` is UniIR's for its modalities and its qrels lines hold its positives."""
    pos = pool[q["pos_cand_list"][0]]
    expected = TASK_IDS.get((q.get("query_modality"), modality(pos.text, pos.image)))
    if q.get("task_id") != expected:
        problems.add(where, f"task_id {q.get('task_id')!r}, but UniIR's task for its modalities is {expected}")
    if qrels is None:
        return
    dids, task = qrels.get(q["qid"], ([], None))
    if sorted(dids) != sorted(q["pos_cand_list"]) or task != str(q.get("task_id")):
        problems.add(where, f"qrels hold {dids} (task {task}) for {q['qid']}, the query "
                            f"{q['pos_cand_list']} (task {q.get('task_id')})")


def _triplet(q: dict, split: str, where: str, root: str, pool: dict, keys: set[str],
             problems: Problems) -> Triplet | None:
    qid, pos_list, neg_list = q.get("qid"), q.get("pos_cand_list"), q.get("neg_cand_list") or []
    if not isinstance(qid, str) or not _ID.match(qid) or not isinstance(pos_list, list) or len(pos_list) < 1:
        problems.add(where, "needs a qid '<dataset_id>:<n>' and a non-empty pos_cand_list")
        return None
    missing = [d for d in [*pos_list, *neg_list] if d not in pool]
    if missing:
        problems.add(where, f"candidate(s) {missing[:3]} are not in {pool_file(split)}")
        return None
    image = q.get("query_img_path")
    if q.get("query_modality") != modality(q.get("query_txt"), image):
        problems.add(where, f"query_modality {q.get('query_modality')!r} does not match query_txt / query_img_path")
    pos = pool[pos_list[0]]
    key = f"{qid.split(':')[0]}, {q.get('query_modality')}, {modality(pos.text, pos.image)}"
    if keys and key not in keys:
        problems.add(where, f"no instruction for ({key}) in {INSTRUCTIONS}")
    source = json.loads(q["query_src_content"]) if q.get("query_src_content") else {}
    img = Img.at(root, image, where) if image else None
    return Triplet(source.get("id"), split, q.get("query_txt") or "", img, pos, [pool[d] for d in neg_list], where)
