"""What eval reads: the export's splits (never leaking), a seeded doc-level hold-out, the whole pool."""

from __future__ import annotations

import pytest

from pipeline.errors import EvalError
from pipeline.eval.config import EvalConfig, HoldoutConfig, load_eval_config
from pipeline.eval.data import EvalQuery, check_disjoint, hold_out, load
from tests.support.gme_run import make_gme_run
from tests.support.megapairs_run import make_megapairs_run


def _q(i: int, group: str) -> EvalQuery:
    return EvalQuery(f"q{i}", f"text {i}", None, group, (), group, "t2t")


def test_export_validation_split_is_used_and_no_validation_doc_is_in_training(tmp_path):
    data = load(str(make_gme_run(tmp_path, rows=12, validation_ratio=0.4)), EvalConfig())
    assert data.holdout is None and data.train and data.validation
    assert not {q.group for q in data.train} & {q.group for q in data.validation}
    # The pool holds every candidate of both splits: positives and negatives alike.
    assert {q.pos for q in data.validation} <= set(data.candidates)
    assert {n for q in data.train for n in q.negs} <= set(data.candidates)
    assert {q.task for q in data.train} == {"it2it"} and data.candidate_mode == "text"
    assert {q.source for q in data.train} <= {"doc", "generated"}


def test_a_run_without_validation_gets_a_seeded_doc_level_holdout(tmp_path):
    run = make_gme_run(tmp_path, rows=12, validation_ratio=0.0)
    cfg = EvalConfig(holdout=HoldoutConfig(ratio=0.4, seed=3))
    a, b = load(str(run), cfg), load(str(run), cfg)
    assert a.holdout == {"ratio": 0.4, "seed": 3, "groups": a.holdout["groups"], "of_groups": 6}
    assert [q.id for q in a.validation] == [q.id for q in b.validation]
    assert not {q.group for q in a.train} & {q.group for q in a.validation}


def test_holdout_keeps_every_query_of_a_doc_on_one_side_and_both_sides_nonempty():
    rows = [_q(i, f"d{i % 5}") for i in range(20)]
    for seed in range(20):
        train, val, _info = hold_out(rows, HoldoutConfig(ratio=0.5, seed=seed))
        assert train and val and len(train) + len(val) == 20
        assert not {q.group for q in train} & {q.group for q in val}
    with pytest.raises(EvalError, match="nothing to hold out"):
        hold_out([_q(0, "d0"), _q(1, "d0")], HoldoutConfig())


def test_leaking_splits_are_refused_naming_the_doc():
    with pytest.raises(EvalError, match=r"both train and validation.*'d1'"):
        check_disjoint([_q(0, "d0"), _q(1, "d1")], [_q(2, "d1")])


def test_megapairs_runs_rank_image_candidates(tmp_path):
    data = load(str(make_megapairs_run(tmp_path, rows=8)), EvalConfig())
    assert data.candidate_mode == "image"
    assert {q.task for q in data.train + data.validation} == {"it2i"}
    assert all(data.candidates[q.pos].image for q in data.train)


def test_config_overrides_and_unknown_keys(tmp_path):
    cfg = load_eval_config(None, ["train.steps=7", "image.model=null", "variants=[untuned, mined]"])
    assert cfg.train.steps == 7 and cfg.image.model is None and cfg.variants == ("untuned", "mined")
    with pytest.raises(Exception, match="train.stepz"):
        load_eval_config(None, ["train.stepz=7"])
    with pytest.raises(Exception, match="must include untuned"):
        load_eval_config(None, ["variants=[mined]"])


def test_shipped_eval_configs_load(repo_root):
    cpu = load_eval_config(str(repo_root / "configs" / "eval.yaml"))
    assert cpu == EvalConfig()
    gpu = load_eval_config(str(repo_root / "configs" / "eval-gpu.yaml"))
    assert gpu.device == "cuda" and gpu.train.steps == 1000 and gpu.image.pretrained == "openai"


def test_image_source_ablations_run_per_source_with_enough_rows_and_say_why_not_otherwise():
    from pipeline.eval.data import EvalData
    from pipeline.eval.runner import variants

    def row(i: int, source: str, negs: int = 2) -> EvalQuery:
        return EvalQuery(f"q{i}", "t", None, f"d{i}", tuple(f"n{j}" for j in range(negs)), f"d{i}", "it2t", source)

    train = [row(0, "doc"), row(1, "doc"), row(2, "generated"), row(3, "generated"), row(4, "retrieved"),
             row(5, "doc", negs=1)]
    data = EvalData("gme", "/x", train, [], {}, {})
    planned, notes = variants(EvalConfig(), data, negatives=2)
    assert [v.name for v in planned] == ["untuned", "mined", "in_batch", "source:doc", "source:generated"]
    assert notes == {"fewer_negatives": 1, "source:retrieved": "not run: 1 training row(s)"}
    assert [len(v.rows) for v in planned] == [0, 5, 5, 2, 2]
    one_source, notes = variants(EvalConfig(), EvalData("gme", "/x", train[:2], [], {}, {}), negatives=2)
    assert [v.name for v in one_source] == ["untuned", "mined", "in_batch"] and "image_source" in notes
