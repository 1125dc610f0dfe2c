"""Near-duplicate evaluation images are contamination: dHash, the eval files' image fields, export rows."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.errors import PipelineConfigError
from pipeline.io.fs import RunFS
from pipeline.io.image_store import IMAGE_REF, ImageStore
from pipeline.stage import REASON
from pipeline.stages.export import Export, ExportConfig, gme_batch
from pipeline.text.contamination import ContaminationConfig, build_eval_set
from pipeline.text.contamination_images import dhash
from tests.support.gme_run import upstream_rows


def noise(seed: int, size=(64, 48), fmt="PNG", **kw) -> bytes:
    rng = np.random.RandomState(seed)
    # Smooth noise (a blurred random field) so resizing keeps its structure, as photos do.
    small = Image.fromarray(rng.randint(0, 255, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    small.save(buf, format=fmt, **kw)
    return buf.getvalue()


def bits(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def test_dhash_finds_reencoded_and_resized_copies_and_tells_other_pictures_apart():
    original = dhash(noise(1))
    copy = Image.open(io.BytesIO(noise(1))).resize((96, 72))
    buf = io.BytesIO()
    copy.save(buf, format="JPEG", quality=70)
    assert bits(original, dhash(buf.getvalue())) <= 4
    assert min(bits(original, dhash(noise(s))) for s in range(2, 12)) > 10
    assert dhash(b"not an image") is None


@pytest.fixture
def run_rows(tmp_path):
    store = ImageStore(RunFS.from_uri(str(tmp_path / "run")))
    table = upstream_rows(store, n=6, negatives=3)
    refs = [store.put(noise(100 + i), "png", 64, 48) for i in range(table.num_rows)]
    i = table.schema.get_field_index("query_image")
    return store, table.set_column(i, "query_image", pa.array(refs, IMAGE_REF))


def eval_file(tmp_path, record: dict) -> str:
    path = tmp_path / "evals" / "eval.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(record) + "\n")
    return str(path)


def test_a_row_whose_query_image_is_a_near_duplicate_of_an_eval_image_is_contamination(tmp_path, run_rows):
    store, table = run_rows
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "q.jpg").write_bytes(noise(101, size=(80, 60), fmt="JPEG", quality=80))
    files = (eval_file(tmp_path, {"query_txt": "nothing like the rows", "query_img_path": "q.jpg"}),)
    on = build_eval_set(ContaminationConfig(eval_files=files, image_distance=4))
    assert gme_batch(table, ExportConfig(), on, store)[REASON].to_pylist() == [
        "", "filter:contamination", "", "", "", ""]
    off = build_eval_set(ContaminationConfig(eval_files=files))
    assert gme_batch(table, ExportConfig(), off, store)[REASON].to_pylist() == [""] * 6


def test_an_eval_image_path_that_does_not_exist_names_image_root(tmp_path):
    files = (eval_file(tmp_path, {"txt": "a passage", "img_path": "images/missing.png"}),)
    with pytest.raises(PipelineConfigError, match="image_root"):
        build_eval_set(ContaminationConfig(eval_files=files, image_distance=4))
    # Texts only (the default) reads no image at all.
    assert build_eval_set(ContaminationConfig(eval_files=files)).texts == 1


def test_image_root_resolves_relative_paths_and_the_stage_reads_images_from_the_run(tmp_path):
    (tmp_path / "mbeir" / "images").mkdir(parents=True)
    (tmp_path / "mbeir" / "images" / "a.png").write_bytes(noise(5))
    files = (eval_file(tmp_path, {"txt": "a passage", "img_path": "images/a.png"}),)
    cfg = ContaminationConfig(eval_files=files, image_distance=0, image_root=str(tmp_path / "mbeir"))
    assert len(build_eval_set(cfg).images) == 1
    stage = Export(ExportConfig(contamination=cfg), SimpleNamespace(run_uri=str(tmp_path / "run")))
    stage.prepare()
    stage._eval_ref = object()  # stands in for ray.put: the step's arguments are what is checked
    assert stage.task_steps()[0].kwargs["run_uri"] == str(tmp_path / "run")


def test_image_distance_is_range_checked():
    with pytest.raises(PipelineConfigError, match="image_distance"):
        ContaminationConfig(image_distance=40)
