"""pipeline/exporters/ms_swift.py: the JSONL loaded back as ms-swift loads it, checked field by field
against the run's GME rows.

The loader here follows ms-swift: `datasets.load_dataset("json", data_files=..., split="train")`
(swift/llm/dataset/loader.py), v3.9+ `TemplateInputs.from_dict` splitting `positive_*` / `negative_*`
keys and taking `messages[i]` with `images[i]` per candidate (swift/template/template_inputs.py), the
pre-3.9 `_embedding_encode` handing out the flat `images` list to query, response, then each rejected
response by their `<image>` tags (swift/llm/template/base.py at v3.8.3), and `load_file`'s path rule:
a path that does not exist from the working directory is joined to `ROOT_IMAGE_DIR`.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex

import pytest
from PIL import Image

from pipeline.errors import ExportError
from pipeline.exporters import export_run
from pipeline.exporters.ms_swift import train_command
from tests.support.gme_run import split_ids

TAG = re.compile("<image>")


def load_file(path: str) -> bytes:
    """ms-swift's vision_utils.load_file for a local path."""
    root = os.environ.get("ROOT_IMAGE_DIR")
    if root is not None and not os.path.exists(path):
        path = os.path.join(root, path)
    with open(os.path.abspath(os.path.expanduser(path)), "rb") as f:
        return f.read()


def swift_rows(path: str, cache: str) -> list[dict]:
    import datasets

    return list(datasets.load_dataset("json", data_files=path, split="train", cache_dir=cache))


def split_inputs(row: dict) -> dict:
    """TemplateInputs.from_dict: chosen / positive / negative, one {messages, images} per candidate."""
    out = {"chosen": {"messages": row["messages"], "images": row["images"] or []}}
    for prefix in ("positive", "negative"):
        messages, images = row[f"{prefix}_messages"], row[f"{prefix}_images"]
        out[prefix] = [{"messages": messages[i], "images": (images[i] if images else None) or []}
                       for i in range(len(messages))]
    return out


def text_and_images(inputs: dict) -> tuple[str, list[bytes]]:
    content = next(m["content"] for m in reversed(inputs["messages"]) if m["role"] == "user")
    assert len(TAG.findall(content)) == len(inputs["images"])
    return TAG.sub("", content), [load_file(p) for p in inputs["images"]]


@pytest.fixture(scope="module")
def swift_out(gme_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("swift") / "out"
    export_run(str(gme_run), "ms-swift", str(out))
    return out


@pytest.fixture
def from_elsewhere(monkeypatch, tmp_path, swift_out):
    """Train as the docs say: from another working directory, with ROOT_IMAGE_DIR at the export."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROOT_IMAGE_DIR", str(swift_out))


def image_bytes(struct: dict | None) -> list[bytes]:
    return [] if struct is None else [struct["bytes"]]


def test_every_split_is_one_jsonl_file_and_images_are_files_under_images(swift_out):
    names = sorted(os.listdir(swift_out))
    assert names == ["README.md", "_fusegen_export.json", "images", "train.jsonl", "validation.jsonl"]


def test_anchor_is_the_instruction_as_system_and_image_plus_query_text(swift_out, gme_rows, from_elsewhere, offline_hf):
    rows = swift_rows(str(swift_out / "train.jsonl"), offline_hf)
    assert sorted(r["id"] for r in rows) == split_ids(gme_rows, "train")
    for row in rows:
        gme = gme_rows[row["id"]]
        chosen = split_inputs(row)["chosen"]
        assert chosen["messages"][0] == {"role": "system", "content": gme["instruction"]}
        assert text_and_images(chosen) == (gme["query_text"], image_bytes(gme["query_image"]))


def test_exactly_one_positive_with_its_text_and_image(swift_out, gme_rows, from_elsewhere, offline_hf):
    rows = swift_rows(str(swift_out / "train.jsonl"), offline_hf)
    assert sorted(r["id"] for r in rows) == split_ids(gme_rows, "train")
    for row in rows:
        gme = gme_rows[row["id"]]
        (positive,) = split_inputs(row)["positive"]
        assert text_and_images(positive) == (gme["pos_text"], image_bytes(gme["pos_image"]))


def test_negatives_align_messages_with_images_in_rank_order(swift_out, gme_rows, from_elsewhere, offline_hf):
    rows = swift_rows(str(swift_out / "validation.jsonl"), offline_hf) + swift_rows(str(swift_out / "train.jsonl"), offline_hf)
    assert sorted(r["id"] for r in rows) == sorted(gme_rows)
    for row in rows:
        gme = gme_rows[row["id"]]
        got = [text_and_images(n) for n in split_inputs(row)["negative"]]
        assert got == [(t, image_bytes(i)) for t, i in zip(gme["neg_texts"], gme["neg_images"])]
        assert row["neg_doc_ids"] == gme["neg_doc_ids"]


def test_rows_keep_their_split(swift_out, gme_rows, offline_hf):
    ids = {split: {r["id"] for r in swift_rows(str(swift_out / f"{split}.jsonl"), offline_hf)}
           for split in ("train", "validation")}
    assert ids == {s: {i for i, r in gme_rows.items() if r["split"] == s} for s in ("train", "validation")}


def test_every_image_is_written_once_under_its_content_hash(swift_out, gme_rows):
    files = [os.path.join(d, f) for d, _, names in os.walk(swift_out / "images") for f in names]
    distinct = {im["bytes"] for r in gme_rows.values() for im in [r["query_image"], r["pos_image"], *r["neg_images"]] if im}
    sizes = set()
    for name in files:
        with open(name, "rb") as f:
            sizes.add(Image.open(io.BytesIO(f.read())).size)
    assert (len(files), sizes) == (len(distinct), {(24, 16)})


def test_it2t_positives_and_negatives_carry_no_image_tags(it2t_run, tmp_path, offline_hf):
    export_run(str(it2t_run), "ms-swift", str(tmp_path / "out"))
    row = swift_rows(str(tmp_path / "out" / "train.jsonl"), offline_hf)[0]
    inputs = split_inputs(row)
    assert [len(c["images"]) for c in [inputs["chosen"], *inputs["positive"], *inputs["negative"]]] == [1, 0, 0, 0, 0]


def test_by_default_every_row_keeps_the_smallest_negative_count_of_the_run(ragged_run, tmp_path, offline_hf):
    marker = export_run(str(ragged_run), "ms-swift", str(tmp_path / "out"))
    rows = swift_rows(str(tmp_path / "out" / "train.jsonl"), offline_hf)
    assert ({len(r["negative_messages"]) for r in rows}, len(rows), marker["dropped"]["fewer_negatives"]) == ({0}, 6, 0)


def test_negatives_n_truncates_to_the_hardest_n_and_drops_rows_with_fewer(ragged_run, tmp_path, offline_hf):
    marker = export_run(str(ragged_run), "ms-swift", str(tmp_path / "out"), negatives=1)
    rows = swift_rows(str(tmp_path / "out" / "train.jsonl"), offline_hf)
    assert ({len(r["negative_messages"]) for r in rows}, len(rows), marker["dropped"]["fewer_negatives"]) == ({1}, 5, 1)


def test_a_negative_count_below_zero_is_refused(gme_run, tmp_path):
    with pytest.raises(ExportError, match="--negatives must be >= 0"):
        export_run(str(gme_run), "ms-swift", str(tmp_path / "out"), negatives=-1)


# -- pre-3.9 layout ---------------------------------------------------------------------------------


def legacy_inputs(row: dict) -> list[tuple[str, list[bytes]]]:
    """v3.8 `_embedding_encode`: query, response, then each rejected response take their images in order."""
    texts = [row["query"], row["response"], *row["rejected_response"]]
    images, out = list(row["images"]), []
    for text in texts:
        n = len(TAG.findall(text))
        out.append((TAG.sub("", text), [load_file(p) for p in images[:n]]))
        images = images[n:]
    assert images == []
    return out


def test_legacy_rows_hand_out_the_flat_image_list_in_tag_order(gme_run, gme_rows, tmp_path, monkeypatch, offline_hf):
    out = tmp_path / "legacy"
    export_run(str(gme_run), "ms-swift", str(out), legacy=True)
    monkeypatch.setenv("ROOT_IMAGE_DIR", str(out))
    rows = swift_rows(str(out / "train.jsonl"), offline_hf)
    assert sorted(r["id"] for r in rows) == split_ids(gme_rows, "train")
    for row in rows:
        gme = gme_rows[row["id"]]
        expected = [(gme["query_text"], image_bytes(gme["query_image"])), (gme["pos_text"], image_bytes(gme["pos_image"]))]
        expected += [(t, image_bytes(i)) for t, i in zip(gme["neg_texts"], gme["neg_images"])]
        assert (legacy_inputs(row), "messages" in row) == (expected, False)


def test_legacy_rows_have_no_system_prompt(gme_run, tmp_path):
    export_run(str(gme_run), "ms-swift", str(tmp_path / "legacy"), legacy=True)
    first = json.loads((tmp_path / "legacy" / "train.jsonl").read_text().splitlines()[0])
    assert "system" not in first and set(first) >= {"query", "response", "rejected_response", "images"}


def test_the_readmes_command_trains_from_any_folder_with_qwen_vl_utils(swift_out, gme_rows, monkeypatch, tmp_path,
                                                                     offline_hf):
    """The README's `swift sft` line, run from elsewhere: its ROOT_IMAGE_DIR makes every image path resolve
    (ms-swift's `_check_path`: the working directory, else ROOT_IMAGE_DIR, never the JSONL's folder), and
    the install line names qwen-vl-utils, which ms-swift's Qwen2-VL loader requires."""
    readme = (swift_out / "README.md").read_text()
    assert train_command(str(swift_out)) in readme
    words = shlex.split(readme.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " "), comments=True)
    assert words[:4] == ["pip", "install", "ms-swift", "qwen-vl-utils"]
    env = dict(w.split("=", 1) for w in words if w.startswith("ROOT_IMAGE_DIR="))
    dataset = words[words.index("--dataset") + 1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROOT_IMAGE_DIR", env["ROOT_IMAGE_DIR"])
    rows = swift_rows(dataset, offline_hf)
    assert rows and all(text_and_images(split_inputs(r)["chosen"])[1] for r in rows)
    monkeypatch.delenv("ROOT_IMAGE_DIR")
    with pytest.raises(FileNotFoundError):  # without it, the JSONL's folder is not where ms-swift looks
        text_and_images(split_inputs(rows[0])["chosen"])
