"""The pure MegaPairs mining rules (pipeline/mining.py): band edges, exclusions, view merge, the cap,
the seeded round-robin, mirrored pairs and hard negatives (property-based)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.mining import (
    Hit,
    MineSettings,
    in_band,
    mine_query,
    mine_seed,
    pick_negatives,
    ranked,
    round_robin,
)

BAND = (0.8, 0.96)


def skips0() -> dict[str, int]:
    return dict.fromkeys(("self", "duplicate", "above_band", "below_band"), 0)


def unit_vectors_at(sims: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The query e0 and one neighbour per similarity: s * e0 + sqrt(1 - s^2) * e_k (float32, as faiss)."""
    dim = len(sims) + 1
    query = np.zeros(dim, np.float32)
    query[0] = 1
    pool = np.zeros((len(sims), dim), np.float32)
    for k, s in enumerate(sims):
        pool[k, 0], pool[k, k + 1] = s, np.sqrt(1 - s * s)
    return query, pool


def test_open_band_keeps_only_similarities_strictly_inside_it():
    sims = [0.79, 0.80, 0.81, 0.95, 0.96, 0.97]
    query, pool = unit_vectors_at(sims)
    scores = pool @ query  # float32 inner products, as faiss returns them
    hits = [Hit(f"n{s}", f"sha{s}", float(v)) for s, v in zip(sims, scores)]
    skips = skips0()
    kept = in_band("q", "sha-q", hits, BAND, skips)
    assert [h.id for h in kept] == ["n0.95", "n0.81"]
    assert skips == {"self": 0, "duplicate": 0, "above_band": 2, "below_band": 2}


def test_self_and_same_sha_neighbours_are_skipped_and_counted():
    hits = [Hit("q", "sha-q", 1.0), Hit("copy", "sha-q", 0.9), Hit("other", "sha-o", 0.9)]
    skips = skips0()
    assert [h.id for h in in_band("q", "sha-q", hits, BAND, skips)] == ["other"]
    assert (skips["self"], skips["duplicate"]) == (1, 1)


def test_views_merge_into_one_pair_per_target_with_views_in_config_order():
    views = [
        ("clip", BAND, [Hit("a", "sa", 0.9), Hit("b", "sb", 0.85)]),
        ("dino", BAND, [Hit("a", "sa", 0.82), Hit("c", "sc", 0.99)]),
        ("text", BAND, [Hit("a", "sa", 0.93)]),
    ]
    result = mine_query("q", "sq", views, MineSettings(pairs_per_query=5, num_negatives=0, min_negatives=0))
    by_target = {p.target.id: p for p in result.pairs}
    assert sorted(by_target) == ["a", "b"]
    assert by_target["a"].views == ["clip", "dino", "text"]
    assert by_target["a"].scores == pytest.approx([0.9, 0.82, 0.93])
    assert result.skips["above_band"] == 1


def test_pairs_per_query_caps_the_targets():
    hits = [Hit(f"t{i}", f"s{i}", 0.9 - i * 0.01) for i in range(6)]
    result = mine_query(
        "q", "sq", [("v", BAND, hits)], MineSettings(pairs_per_query=3, num_negatives=0, min_negatives=0)
    )
    assert [p.target.id for p in result.pairs] == ["t0", "t1", "t2"]
    assert [p.rank for p in result.pairs] == [0, 1, 2]


def test_round_robin_takes_one_per_view_in_turn_and_skips_taken_targets():
    lists = [["a", "b", "c"], ["a", "d"], ["e"]]
    taken = round_robin(lists, 5, seed=0)
    assert len(taken) == len(set(taken)) == 5
    # Whatever the drawn order, the first three taken come from three different views.
    assert set(taken[:3]) in ({"a", "d", "e"}, {"a", "b", "e"})


def test_seeded_order_is_reproducible_and_depends_on_the_seed():
    views = [(f"v{k}", BAND, [Hit(f"t{k}", f"s{k}", 0.9)]) for k in range(4)]
    cfg = MineSettings(pairs_per_query=1, num_negatives=0, min_negatives=0)
    first = {
        seed: mine_query("q", "sq", views, MineSettings(**{**cfg.__dict__, "seed": seed})).pairs[0].target.id
        for seed in range(40)
    }
    again = {
        seed: mine_query("q", "sq", views, MineSettings(**{**cfg.__dict__, "seed": seed})).pairs[0].target.id
        for seed in range(40)
    }
    assert first == again
    assert len(set(first.values())) == 4


def test_mine_seed_is_stable_per_query_and_differs_between_queries():
    assert mine_seed(0, "q1") == mine_seed(0, "q1")
    assert len({mine_seed(0, "q1"), mine_seed(0, "q2"), mine_seed(1, "q1")}) == 3
    assert 0 <= mine_seed(7, "x") < 2**63


def test_mirrored_drop_keeps_only_the_direction_whose_query_sorts_first():
    cfg = MineSettings(num_negatives=0, min_negatives=0, mirrored="drop")
    a_side = mine_query("a", "sa", [("v", BAND, [Hit("b", "sb", 0.9)])], cfg)
    b_side = mine_query("b", "sb", [("v", BAND, [Hit("a", "sa", 0.9)])], cfg)
    assert ([p.target.id for p in a_side.pairs], b_side.pairs) == (["b"], [])
    keep = mine_query(
        "b", "sb", [("v", BAND, [Hit("a", "sa", 0.9)])], MineSettings(num_negatives=0, min_negatives=0)
    )
    assert [p.target.id for p in keep.pairs] == ["a"]


def test_negatives_come_from_every_view_out_of_band_included_best_first():
    views = [
        (
            "clip",
            BAND,
            [Hit("q", "sq", 1.0), Hit("t", "st", 0.9), Hit("far", "sf", 0.3), Hit("dup", "sq", 0.97)],
        ),
        ("dino", BAND, [Hit("close", "sc", 0.98), Hit("far", "sf", 0.5)]),
    ]
    result = mine_query("q", "sq", views, MineSettings(pairs_per_query=1, num_negatives=5, min_negatives=1))
    (pair,) = result.pairs
    assert [h.id for h in pair.negatives] == ["close", "far"]
    assert [h.score for h in pair.negatives] == pytest.approx([0.98, 0.5])


def test_too_few_negatives_filters_the_pair_and_keeps_what_it_found():
    views = [("v", BAND, [Hit("t", "st", 0.9), Hit("n", "sn", 0.5)])]
    (pair,) = mine_query("q", "sq", views, MineSettings(num_negatives=5, min_negatives=2)).pairs
    assert (pair.reason, [h.id for h in pair.negatives]) == ("filter:too_few_negatives", ["n"])


def test_no_neighbour_in_band_gives_no_pair_and_the_skip_counts():
    views = [("v", BAND, [Hit("q", "sq", 1.0), Hit("x", "sx", 0.2)]), ("w", BAND, [Hit("y", "sq", 0.9)])]
    result = mine_query("q", "sq", views, MineSettings())
    assert result.pairs == []
    assert result.skips == {"self": 1, "duplicate": 1, "above_band": 0, "below_band": 1}


hit_lists = st.lists(st.tuples(st.integers(0, 30), st.floats(-1, 1, allow_nan=False)), max_size=60)
sha_maps = st.lists(st.integers(0, 8), min_size=31, max_size=31)


@settings(max_examples=200, deadline=None)
@given(raw=hit_lists, shas=sha_maps, target=st.integers(1, 30), num=st.integers(0, 8))
def test_negatives_never_hold_the_target_the_query_or_their_duplicates(raw, shas, target, num):
    # ids q (0) and i1..i30 with shas s0..s8 drawn per id: several ids share a sha (the query's too),
    # and an id repeats across views with other scores.
    hits = [Hit("q" if i == 0 else f"i{i}", f"s{shas[i]}", score) for i, score in raw]
    query_sha = shas[0]
    target_hit = Hit(f"i{target}", f"s{shas[target]}", 0.9)
    negs = pick_negatives("q", f"s{query_sha}", target_hit, ranked(hits), num)
    ids = [h.id for h in negs]
    assert len(negs) <= num
    assert "q" not in ids and target_hit.id not in ids
    assert not {h.sha for h in negs} & {f"s{query_sha}", target_hit.sha}
    assert len(set(ids)) == len(ids) and len({h.sha for h in negs}) == len(negs)
    assert [h.score for h in negs] == sorted((h.score for h in negs), reverse=True)
    # Each negative carries its best score over the views.
    assert all(h.score == max(x.score for x in hits if x.id == h.id) for h in negs)
    # None was passed over: an allowed hit left out means the list is full and scores no higher than its last.
    banned = {h.sha for h in negs} | {f"s{query_sha}", target_hit.sha}
    left = [x for x in hits if x.id not in ids and x.id not in ("q", target_hit.id) and x.sha not in banned]
    if len(negs) < num:
        assert left == []
    elif negs:
        assert all(x.score <= negs[-1].score for x in left)
