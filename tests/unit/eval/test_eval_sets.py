"""`eval_sets`: a user's own evaluation set, and any export format as eval's input."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.eval import evaluate, load_eval_config
from pipeline.eval.data import load
from pipeline.exporters import export_run
from tests.support.eval_run import make_keyword_run


def textured_png(seed: int) -> bytes:
    rng = np.random.RandomState(seed)
    img = Image.fromarray(rng.randint(0, 255, (6, 8, 3), dtype=np.uint8)).resize((24, 16), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_eval_set_rows_seen_in_training_are_named_and_left_out(tmp_path):
    run = make_keyword_run(tmp_path / "a", docs=20)
    # The evaluation set: docs 10..29 (10..19 are the run's own, 20..29 new), with a picture of its own.
    evals = make_keyword_run(tmp_path / "b", docs=range(10, 30), image=textured_png(3))
    # Every keyword query shares its sea sentence with others (half its 13-grams): only a near-copy counts here.
    cfg = load_eval_config(None, ["image.model=null", "train.steps=10", "train.seeds=[0]", "overlap_threshold=0.95",
                                  "variants=[untuned, mined]", f"eval_sets=[{evals}]"])
    trained_docs = {q.group for q in load(str(run), cfg).train}
    report = evaluate(str(run), cfg)
    [entry] = report["eval_sets"]
    left = {row["id"] for row in entry["left_out"]}
    assert left and {row["reason"] for row in entry["left_out"]} <= {"query_text", "positive_text"}
    assert {i.split("-")[0] for i in left} == trained_docs & {f"k{d}" for d in range(10, 30)}
    kept = report["variants"]["mined"]["seeds"][0]["eval_sets"][entry["name"]]["all"]["queries"]
    assert kept == entry["queries"] == 40 - len(left)


def test_eval_set_images_equal_to_training_images_are_left_out(tmp_path):
    run = make_keyword_run(tmp_path / "a", docs=12)
    # New docs (no text overlap) showing the very image the run's queries show.
    evals = make_keyword_run(tmp_path / "b", docs=range(30, 36))
    cfg = load_eval_config(None, ["image.model=null", "train.steps=2", "train.seeds=[0]", "variants=[untuned]",
                                  "overlap_threshold=0.95", f"eval_sets=[{evals}]"])
    [entry] = evaluate(str(run), cfg)["eval_sets"]
    assert entry["queries"] == 0 and {r["reason"] for r in entry["left_out"]} == {"query_image"}


def test_an_ms_swift_export_folder_is_an_input_too(tmp_path):
    run = make_keyword_run(tmp_path / "a", docs=16)
    out = tmp_path / "swift"
    export_run(str(run), "ms-swift", str(out))
    from_run, from_export = load(str(run), load_eval_config(None)), load(str(out), load_eval_config(None))
    assert from_export.format == "ms-swift"
    assert len(from_export.train) == len(from_run.train) and len(from_export.validation) == len(from_run.validation)
    # ms-swift rows carry no doc ids: passages are pooled by content, one per distinct passage.
    assert len(from_export.candidates) == len(from_run.candidates)
