"""ms-swift embedding training data (InfoNCE): `OUT/<split>.jsonl` plus `OUT/images/`.

v3.9+ layout (ms-swift docs/source_en/BestPractices/Embedding.md, `TemplateInputs` in
swift/template/template_inputs.py), one line per triplet:

    messages           [{"role": "system", "content": instruction}, {"role": "user", "content": "<image>" + query}]
    images             [query image]                      one per <image> tag in messages
    positive_messages  [[{"role": "user", "content": ("<image>" +) pos_text}]]   exactly one positive
    positive_images    [[pos image] or []]                aligned with positive_messages
    negative_messages  [[{"role": "user", "content": ("<image>" +) neg_text}], ...]
    negative_images    [[neg image] or [], ...]           aligned with negative_messages

The instruction is the anchor's system message only (GME: candidates keep the default system prompt).
`legacy=True` writes the layout before v3.9: `query`, `response`, `rejected_response` (list) and one
flat `images` list matched to the `<image>` tags of query, response, then each rejected response in
order; it has no query-only system prompt (ms-swift copied `system` onto every candidate), so the
instruction is left out. Every row keeps the same number of negatives (ms-swift's InfoNCE loops over
rows of ragged negatives, much slower): by default the smallest count in the run, or `--negatives N`
(rows with fewer dropped). Lines also carry `id`, `doc_id` and `neg_doc_ids`, which ms-swift's
loader drops (`RowPreprocessor.remove_useless_columns`) and `fusegen validate` reads.

MegaPairs runs (triplets_megapairs.py `as_triplets`): `messages` = user `<image>` + instruction (no
system message), `positive_messages` = `<image>` with `positive_images` the target image, and one
negative per `hns` image (the query image first when the run wrote `query_first`, as MegaPairs
trains); one line per pair (its first instruction) or, with `--instructions all`, one per (pair,
instruction), ids `<id>#<k>`. Such lines also carry `query_id` (validate keeps a query's lines in one split).

Image paths are relative to OUT: ms-swift opens a relative path from the working directory, or joins it
to `ROOT_IMAGE_DIR`, never to the JSONL's folder (`_check_path` in swift/llm/template/vision_utils.py
lines 105-125 of v3.12.6, swift/template/vision_utils.py lines 104-124 of 4.6.0.dev0), so train with
`ROOT_IMAGE_DIR=OUT` or from inside OUT. GME is a Qwen2-VL model, whose ms-swift loader stops without the
`qwen-vl-utils` distribution ("The 'qwen_vl_utils' distribution was not found": v3.12.6
swift/llm/model/model/qwen.py `get_model_tokenizer_qwen2_vl`, lines 778-796, which `qwen2_gme` loads with;
4.6.0.dev0 swift/model/models/qwen.py `Qwen2VLLoader._check_qwen_vl_utils`, lines 773-782). `OUT/README.md`
and `fusegen export` say both beside the command (`train_command`).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator

from pipeline.exporters.outdir import OutDir
from pipeline.exporters.source import Negatives, RunSource
from pipeline.exporters.view import Candidate, Img, Problems, Triplet

TAG = "<image>"
FILES = {"train": "train.jsonl", "validation": "validation.jsonl"}
_TAG = re.compile(re.escape(TAG))


def train_command(out: str) -> str:
    """How to train GME on the export at `out` with ms-swift, and the two things that trip it."""
    root = os.path.abspath(out)
    data = shlex.quote(os.path.join(root, "train.jsonl"))
    return (
        "pip install ms-swift qwen-vl-utils   # ms-swift's Qwen2-VL (GME) loader stops without qwen-vl-utils\n"
        f"ROOT_IMAGE_DIR={shlex.quote(root)} swift sft --model iic/gme-Qwen2-VL-2B-Instruct --task_type embedding \\\n"
        f"    --loss_type infonce --dataset {data} --train_type lora\n"
        "# ms-swift opens the rows' relative image paths from the working directory or ROOT_IMAGE_DIR,\n"
        "# never from the JSONL's folder: keep ROOT_IMAGE_DIR (or run from inside the export folder)."
    )


def readme(out: str, legacy: bool) -> str:
    layout = "the layout before ms-swift 3.9 (`--ms-swift-legacy`)" if legacy else "ms-swift's 3.9+ layout"
    older = ("\nThis layout is for ms-swift before 3.9: check the embedding training flags of that version.\n"
             if legacy else "")
    return (
        f"ms-swift embedding (InfoNCE) rows in {layout}, written by `fusegen export --format ms-swift`:\n"
        "`train.jsonl` / `validation.jsonl`, images under `images/` referenced by paths relative to this folder.\n\n"
        f"```bash\n{train_command(out)}\n```\n{older}"
    )


def _tagged(text: str | None, image: str | None) -> str:
    return (TAG if image else "") + (text or "")


def record(row: dict, out: OutDir, negs: tuple, legacy: bool) -> dict:
    neg_ids, neg_texts, neg_structs = negs
    query_image, pos_image = out.image(row["query_image"]), out.image(row["pos_image"])
    neg_images = [out.image(s) for s in neg_structs]
    ids = {"id": row["id"], "doc_id": row["doc_id"], "neg_doc_ids": list(neg_ids)}
    if row.get("query_id") is not None:
        ids["query_id"] = row["query_id"]
    if legacy:
        images = [p for p in (query_image, pos_image, *neg_images) if p]
        return {
            "query": _tagged(row["query_text"], query_image),
            "response": _tagged(row["pos_text"], pos_image),
            "rejected_response": [_tagged(t, p) for t, p in zip(neg_texts, neg_images)],
            "images": images, **ids,
        }
    system = [{"role": "system", "content": row["instruction"]}] if row.get("instruction") else []
    return {
        "messages": [*system, {"role": "user", "content": _tagged(row["query_text"], query_image)}],
        "images": [query_image] if query_image else [],
        "positive_messages": [[{"role": "user", "content": _tagged(row["pos_text"], pos_image)}]],
        "positive_images": [[pos_image] if pos_image else []],
        "negative_messages": [[{"role": "user", "content": _tagged(t, p)}] for t, p in zip(neg_texts, neg_images)],
        "negative_images": [[p] if p else [] for p in neg_images],
        **ids,
    }


def write(source: RunSource, out: OutDir, negatives: Negatives, legacy: bool = False,
          instructions: str = "first") -> dict:
    """Write every split; returns {split: {"read": n, "written": n, "dropped": n}}."""
    counts = {}
    for split in source.splits:
        read = dropped = 0

        def records(split: str = split) -> Iterator[dict]:
            nonlocal read, dropped
            for _, rows in source.triplets(split, instructions):
                read += 1
                for row in rows:
                    negs = negatives.take(row)
                    if negs is None:
                        dropped += 1
                    else:
                        yield record(row, out, negs, legacy)

        written = out.write_lines(FILES.get(split, f"{split}.jsonl"), records())
        counts[split] = {"read": read, "written": written, "dropped": dropped}
    out.write_text("README.md", readme(out.path, legacy))
    return counts


# -- reading back (fusegen validate), the way ms-swift does ----------------------------------------


def _content(messages: list, where: str, problems: Problems) -> str:
    if not isinstance(messages, list) or not messages:
        problems.add(where, f"a message list must be a non-empty list (got {messages!r:.60})")
        return ""
    bad = [m for m in messages if not isinstance(m, dict) or set(m) - {"role", "content"}
           or m.get("role") not in {"system", "user", "assistant"} or not isinstance(m.get("content"), str)]
    if bad:
        problems.add(where, f"messages must be {{role, content}} with a known role (got {bad[0]!r:.80})")
        return ""
    return next((m["content"] for m in reversed(messages) if m["role"] != "system"), "")


def _candidate(text: str, paths: list, where: str, root: str, problems: Problems) -> Candidate:
    if not isinstance(paths, list) or len(_TAG.findall(text)) != len(paths):
        problems.add(where, f"{len(_TAG.findall(text))} <image> tag(s) but images {paths!r:.80}")
        paths = []
    return Candidate(None, _TAG.sub("", text), Img.at(root, paths[0], where) if paths else None)


def read(root: str, problems: Problems) -> Iterator[Triplet]:
    for split, name in _files(root):
        counts: set[int] = set()
        with open(os.path.join(root, name), encoding="utf-8") as f:
            for no, line in enumerate(f, start=1):
                where = f"{name}:{no}"
                row = problems.json_line(line, where)
                if row is None:
                    continue
                t = _legacy(row, where, root, problems) if "query" in row else _v39(row, where, root, problems)
                if t is not None:
                    counts.add(len(t.negs))
                    yield Triplet(row.get("id"), split, t.query_text, t.query_image, t.pos, t.negs, where,
                                  row.get("query_id"))
        if len(counts) > 1:
            problems.add(name, f"rows hold different numbers of negatives {sorted(counts)}; ms-swift wants them equal")


def _files(root: str) -> list[tuple[str, str]]:
    known = [(split, name) for split, name in FILES.items() if os.path.isfile(os.path.join(root, name))]
    return known


def _v39(row: dict, where: str, root: str, problems: Problems) -> Triplet | None:
    keys = ("messages", "positive_messages", "positive_images", "negative_messages", "negative_images")
    if any(k not in row for k in keys):
        problems.add(where, f"missing key(s) {[k for k in keys if k not in row]}")
        return None
    query = _candidate(_content(row["messages"], where, problems), row.get("images") or [], where, root, problems)
    pos_msgs, pos_imgs = row["positive_messages"], row["positive_images"]
    if not isinstance(pos_msgs, list) or len(pos_msgs) != 1 or not isinstance(pos_imgs, list) or len(pos_imgs) != 1:
        problems.add(where, "positive_messages / positive_images must hold exactly one positive")
        return None
    pos = _candidate(_content(pos_msgs[0], where, problems), pos_imgs[0], where, root, problems)
    neg_msgs, neg_imgs = row["negative_messages"], row["negative_images"]
    if not isinstance(neg_msgs, list) or not isinstance(neg_imgs, list) or len(neg_msgs) != len(neg_imgs):
        problems.add(where, "negative_messages and negative_images must be lists of one length")
        return None
    neg_ids = row.get("neg_doc_ids") or [None] * len(neg_msgs)
    negs = [_candidate(_content(m, where, problems), p, where, root, problems) for m, p in zip(neg_msgs, neg_imgs)]
    negs = [Candidate(d, n.text, n.image) for d, n in zip(neg_ids, negs)]
    return Triplet(row.get("id"), "", query.text, query.image, Candidate(row.get("doc_id"), pos.text, pos.image), negs, where)


def _legacy(row: dict, where: str, root: str, problems: Problems) -> Triplet | None:
    texts = [row.get("query"), row.get("response"), *(row.get("rejected_response") or [])]
    if not all(isinstance(t, str) for t in texts):
        problems.add(where, "query, response and every rejected_response must be strings")
        return None
    images = list(row.get("images") or [])
    need = [len(_TAG.findall(t)) for t in texts]
    if sum(need) != len(images):
        problems.add(where, f"{sum(need)} <image> tag(s) but {len(images)} image(s)")
        return None
    cands, start = [], 0
    for text, n in zip(texts, need):
        cands.append(_candidate(text, images[start : start + n], where, root, problems))
        start += n
    neg_ids = row.get("neg_doc_ids") or [None] * (len(cands) - 2)
    negs = [Candidate(d, c.text, c.image) for d, c in zip(neg_ids, cands[2:])]
    pos = Candidate(row.get("doc_id"), cands[1].text, cands[1].image)
    return Triplet(row.get("id"), "", cands[0].text, cands[0].image, pos, negs, where)
