"""M-BEIR (UniIR): query records, a candidate pool and query instructions, plus `OUT/images/`.

Read by UniIR's `MBEIRMainDataset` (src/data/mbeir_dataset.py) with `mbeir_data_dir=OUT`:

    query/train/mbeir_fusegen_train.jsonl, query/val/mbeir_fusegen_val.jsonl
        {qid, query_txt, query_img_path, query_modality, query_src_content, pos_cand_list, neg_cand_list}
    cand_pool/local/mbeir_fusegen_{train,val}_cand_pool.jsonl
        {did, txt, img_path, modality, src_content}
    instructions/query_instructions.tsv
        query_modality, cand_modality, dataset, dataset_id, prompt_1, ...   (one header line)

Ids are "<dataset_id>:<n>" as UniIR hashes them (`hash_qid` = id * 500000 + n, `hash_did` = id *
10^7 + n): UniIR's ten datasets use ids 0-9, fusegen starts at 10 and moves to the next id every
500000 queries, so hashed ids never collide; a group's candidates share its id (UniIR's evaluation
keeps only positives of the query's dataset id). Modalities are "text", "image" or "image,text"; image
paths are relative to OUT; `src_content` / `query_src_content` are JSON strings holding the fusegen ids
(`id`, `doc_id`). The loader prepends a prompt drawn from the instructions file to `query_txt`, so the
rows' instructions go there, keyed by (dataset id, query modality, candidate modality). Negatives: all
of a row's by default (UniIR samples `hard_neg_num` of them, wrapping around), or `--negatives N`.
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

DATASET_ID = 10
QUERIES_PER_ID = 500_000
SPLIT_DIRS = {"train": "train", "validation": "val"}
INSTRUCTIONS = "instructions/query_instructions.tsv"
MODALITIES = ("text", "image", "image,text")
_ID = re.compile(r"^\d+:\d+$")


def query_file(split: str) -> str:
    s = SPLIT_DIRS.get(split, split)
    return f"query/{s}/mbeir_fusegen_{s}.jsonl"


def pool_file(split: str) -> str:
    return f"cand_pool/local/mbeir_fusegen_{SPLIT_DIRS.get(split, split)}_cand_pool.jsonl"


def modality(text: str | None, image: str | None) -> str:
    return ",".join(m for m, present in (("image", image), ("text", text)) if present) or "text"


class _Pool:
    """Candidates of one split, each written once per dataset id and numbered as it first appears
    (`numbers` is shared by the splits' pools, so a did is unique across them: pools can be merged)."""

    def __init__(self, out: OutDir, name: str, numbers: dict[int, int]) -> None:
        self.out, self.name = out, name
        self.dids: dict[tuple, str] = {}
        self.next = numbers
        self.f = open(out.rel(name) + ".tmp", "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def did(self, dataset_id: int, doc_id: str, text: str, image: str | None) -> tuple[str, str]:
        digest = hashlib.blake2b(f"{text}\x1f{image}".encode(), digest_size=12).hexdigest()
        key = (dataset_id, doc_id, digest)
        if key not in self.dids:
            n = self.next.get(dataset_id, 0)
            self.next[dataset_id] = n + 1
            did = self.dids[key] = f"{dataset_id}:{n}"
            entry = {"did": did, "txt": text, "img_path": image, "modality": modality(text, image),
                     "src_content": json.dumps({"doc_id": doc_id}, ensure_ascii=False)}
            self.f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return self.dids[key], modality(text, image)

    def close(self) -> None:
        self.f.close()
        os.replace(self.out.rel(self.name) + ".tmp", self.out.rel(self.name))
        self.out.files.append(self.name)


def _queries(rows: Iterator[dict], pool: _Pool, out: OutDir, negatives: Negatives, prompts: dict,
             tally: dict) -> Iterator[dict]:
    """Query records of one split; `tally` counts rows read and numbers queries across splits."""
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
        yield {
            "qid": f"{dataset_id}:{n % QUERIES_PER_ID}", "query_txt": row["query_text"],
            "query_img_path": query_image, "query_modality": query_modality,
            "query_src_content": json.dumps({"id": row["id"], "doc_id": row["doc_id"]}, ensure_ascii=False),
            "pos_cand_list": [pos], "neg_cand_list": neg_dids,
        }


def write(source: RunSource, out: OutDir, negatives: Negatives) -> dict:
    counts, prompts, tally, numbers = {}, {}, {"queries": 0}, {}
    for split in source.splits:
        os.makedirs(os.path.dirname(out.rel(pool_file(split))), exist_ok=True)
        pool = _Pool(out, pool_file(split), numbers)
        tally["read"] = 0
        written = out.write_lines(query_file(split), _queries(source.rows(split), pool, out, negatives, prompts, tally))
        pool.close()
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
        with open(os.path.join(root, name), encoding="utf-8") as f:
            for no, line in enumerate(f, start=1):
                where = f"{name}:{no}"
                q = problems.json_line(line, where)
                if q is not None:
                    t = _triplet(q, split, where, root, pool, keys, problems)
                    if t is not None:
                        yield t


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
