"""pipeline/io/dedup.py: the key-partitioned dedup decides exactly as the driver-held rule it replaced.

The oracle is that rule, as ingest had it (a row whose content an earlier kept row holds is a duplicate;
else one whose id an earlier kept row holds is a reused id; else both keys are remembered), run over all
shards in shard order with Python sets. Generated shard sets have repeats within and across shards; the
new path runs with several owners, with shards finishing in any order (through the committer), and
resumed from the committed parts of a partial run.
"""

from __future__ import annotations

import tempfile
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.columns import INTERNAL, PARENT, REASON, SHARD, SRC, STATUS
from pipeline.io.commit import ShardCommitter, committed_files, remove_garbage, rewrite_parts, write_pieces
from pipeline.io.dedup import DedupRule, FirstSeen, KeyOwner, SeenKeys, row_keys, text_keys
from pipeline.io.fs import RunFS
from pipeline.stage import Stage, StageConfig

RULE = DedupRule(("text", "doc"), "filter:duplicate_text", "error:duplicate_doc_id")

# Shards of (content, id) rows drawn from small alphabets, so repeats within and across shards are common.
ROWS = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=0, max_size=8)
SHARDS = st.lists(ROWS, min_size=1, max_size=7)


def oracle(shards: list[list[tuple[int, int]]]) -> list[list[tuple[str, str]]]:
    """The rule the driver ran before (ingest.first_seen over sets of ints), shard after shard."""
    seen_content: set[str] = set()
    seen_id: set[str] = set()
    out = []
    for rows in shards:
        verdicts = []
        for content, doc in rows:
            text, doc_id = f"t{content}", f"d{doc}"
            if text in seen_content:
                verdicts.append(("filtered", RULE.duplicate))
            elif doc_id in seen_id:
                verdicts.append(("rejected", RULE.reused_id))
            else:
                seen_content.add(text)
                seen_id.add(doc_id)
                verdicts.append(("ok", ""))
        out.append(verdicts)
    return out


def keys_of(rows: list[tuple[int, int]]) -> np.ndarray:
    return row_keys(text_keys([f"t{c}" for c, _ in rows]), text_keys([f"d{d}" for _, d in rows]))


def verdicts(seen: FirstSeen, rows: list[tuple[int, int]]) -> list[tuple[str, str]]:
    dropped = seen.decide(keys_of(rows))
    return [dropped.get(i, ("ok", "")) for i in range(len(rows))]


@settings(max_examples=80, deadline=None)
@given(SHARDS, st.integers(1, 4))
def test_decisions_equal_the_driver_rule_shard_by_shard(shards, owners):
    seen = FirstSeen.local(RULE, owners)
    assert [verdicts(seen, rows) for rows in shards] == oracle(shards)
    kept = sum(v == ("ok", "") for shard in oracle(shards) for v in shard)
    assert seen.size()[0] == 2 * kept  # the owners hold the kept rows' keys, nothing else


@settings(max_examples=40, deadline=None)
@given(SHARDS, st.integers(0, 7), st.integers(1, 3))
def test_a_resumed_run_decides_as_a_clean_one(shards, cut, owners):
    """Decide the first `cut` shards, keep their kept rows as parts, rebuild new owners from those parts
    alone (what a resume after a driver kill does), and decide the rest."""
    cut = min(cut, len(shards))
    expected = oracle(shards)
    with tempfile.TemporaryDirectory() as tmp:
        run_fs = RunFS.from_uri(tmp)
        first = FirstSeen.local(RULE, owners)
        parts = []
        for i, rows in enumerate(shards[:cut]):
            got = verdicts(first, rows)
            kept = [r for r, v in zip(rows, got) if v == ("ok", "")]
            rel = f"01_x/part-{i:06d}.parquet"
            run_fs.write_parquet(rel, pa.table({"text": [f"t{c}" for c, _ in kept],
                                                "doc": [f"d{d}" for _, d in kept]}, schema=SCHEMA))
            parts.append(rel)
        resumed = FirstSeen.local(RULE, owners + 1)  # another partitioning: the decisions must not care
        loaded = resumed.load(tmp, parts, lambda t: keys_of(list(zip(
            [int(x[1:]) for x in t["text"].to_pylist()], [int(x[1:]) for x in t["doc"].to_pylist()]))), chunk=2)
        assert loaded == sum(v == ("ok", "") for shard in expected[:cut] for v in shard)
        assert [verdicts(resumed, rows) for rows in shards[cut:]] == expected[cut:]


SCHEMA = pa.schema([("text", pa.string()), ("doc", pa.string())])


class Texts(Stage):
    """A stage whose rows are (text, doc) and that dedups on them, as ingest does."""

    name = "x"
    config_cls = StageConfig
    ordered_commit = True
    dedup = RULE

    def __init__(self) -> None:
        super().__init__(StageConfig(), None)

    def dedup_keys(self, kept: pa.Table) -> np.ndarray:
        return row_keys(text_keys(kept["text"].to_pylist()), text_keys(kept["doc"].to_pylist()))


def block(shard: str, rows: list[tuple[int, int]]) -> pa.Table:
    n = len(rows)
    return pa.table({
        "id": [f"{shard}-{i}" for i in range(n)], "text": [f"t{c}" for c, _ in rows],
        "doc": [f"d{d}" for _, d in rows], SHARD: [shard] * n, SRC: pa.array(range(n), pa.int64()),
        PARENT: [None] * n, STATUS: ["ok"] * n, REASON: [""] * n,
    })


@settings(max_examples=60, deadline=None)
@given(SHARDS.filter(lambda s: all(s)), st.randoms(use_true_random=False), st.integers(1, 3))
def test_shards_finishing_in_any_order_commit_the_rows_a_clean_in_order_run_keeps(shards, rng, owners):
    """Each shard reaches the workers as one or more pieces (blocks), each piece holding its own repeats;
    receipts reach the committer in a shuffled order. The committed parts hold exactly the rows the rule
    keeps, in order, and the rejects the rows it drops with their reasons; a shard is rewritten exactly
    when some piece's own decision differs from the rule's (a held row that must come back included)."""
    expected = oracle(shards)
    names = [f"{i:06d}" for i in range(len(shards))]
    rewritten: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        run_fs, stage = RunFS.from_uri(tmp), Texts()
        receipts, wrong_guess = [], set()
        for s, rows, verdicts in zip(names, shards, expected):
            cuts = sorted(rng.sample(range(1, len(rows)), rng.randint(0, len(rows) - 1))) if len(rows) > 1 else []
            table = block(s, rows)
            for lo, hi in zip([0, *cuts], [*cuts, len(rows)]):
                receipts.append(write_pieces(table.slice(lo, hi - lo), tmp, stage, "01_x", "01_x"))
                if oracle([rows[lo:hi]])[0] != verdicts[lo:hi]:
                    wrong_guess.add(s)
        rng.shuffle(receipts)
        specs = [SimpleNamespace(shard=s, rows=len(rows)) for s, rows in zip(names, shards)]
        seen = FirstSeen.local(RULE, owners)

        def rewrite(pieces, overrides):
            rewritten.append(pieces[0]["parts"][0].split("-")[1] if pieces[0]["parts"] else
                             pieces[0]["held"].split("-")[1])
            return rewrite_parts(tmp, "01_x", "01_x", pieces, overrides)

        committer = ShardCommitter(run_fs, stage, "01_x", specs, SimpleNamespace(update=lambda n, rows: None),
                                   seen.decide, rewrite)
        for r in receipts:
            committer.add(r)
        committer.finish()
        parts, rejects = committed_files(run_fs, "01_x")
        kept = [i for rel in parts for i in run_fs.read_parquet(rel)["id"].to_pylist()]
        dropped = [(r["id"], (r["status"], r["reason"])) for rel in rejects for r in run_fs.read_parquet(rel).to_pylist()]
        garbage = remove_garbage(run_fs, "01_x", "01_x")
        assert run_fs.list_files("01_x/_held") == [] and committed_files(run_fs, "01_x") == (parts, rejects)
    want = [(f"{s}-{i}", v) for s, shard in zip(names, expected) for i, v in enumerate(shard)]
    assert kept == [i for i, v in want if v == ("ok", "")]
    assert len(dropped) == len(dict(dropped)) and dict(dropped) == {i: v for i, v in want if v != ("ok", "")}
    assert not set(INTERNAL) & set(dropped)
    assert sorted(rewritten) == sorted(wrong_guess)
    assert garbage >= 0


def test_a_held_row_comes_back_when_the_row_it_repeated_is_dropped_by_an_earlier_shard():
    """Shard 1's first row reuses shard 0's id; its second repeats the first one's text. Alone, shard 1
    keeps the first and holds the second; in shard order the first is a reused id, so the second is the
    first of its text and is kept, in its place."""
    with tempfile.TemporaryDirectory() as tmp:
        run_fs, stage = RunFS.from_uri(tmp), Texts()
        first = write_pieces(block("000000", [(1, 1)]), tmp, stage, "01_x", "01_x")
        second = write_pieces(block("000001", [(2, 1), (2, 2), (3, 3)]), tmp, stage, "01_x", "01_x")
        assert second["held_pos"].to_pylist() == [[1]]
        specs = [SimpleNamespace(shard="000000", rows=1), SimpleNamespace(shard="000001", rows=3)]
        committer = ShardCommitter(run_fs, stage, "01_x", specs, SimpleNamespace(update=lambda n, rows: None),
                                   FirstSeen.local(RULE).decide, lambda *a: rewrite_parts(tmp, "01_x", "01_x", *a))
        committer.add(second)
        committer.add(first)
        committer.finish()
        marker = run_fs.read_json("01_x/_parts/000001.json")
        (part,) = marker["files"]["parts"]
        assert run_fs.read_parquet(part).to_pylist() == [{"id": "000001-1", "text": "t2", "doc": "d2"},
                                                         {"id": "000001-2", "text": "t3", "doc": "d3"}]
        (gone,) = [r for rel in marker["files"]["rejects"] for r in run_fs.read_parquet(rel).to_pylist()]
        assert (gone["id"], gone["status"], gone["reason"]) == ("000001-0", "rejected", RULE.reused_id)
        assert marker["rows"] == {"in": 3, "out": 2, "filtered": 0, "rejected": 1}


def test_seen_keys_find_what_was_added_across_runs_and_keys_sharing_a_high_word():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, size=(5000, 2), dtype=np.int64).astype(np.uint64)
    keys[:50, 0] = 7  # fifty keys share one high word, told apart by the low word
    seen = SeenKeys()
    for start in range(0, 4000, 300):  # many adds: runs of several sizes, merged as they go
        seen.add(keys[start:min(start + 300, 4000)])
    assert len(seen) == 4000 and len(seen.runs) < 12
    found = seen.contains(keys)
    assert found[:4000].all() and not found[4000:].any()
    probe = np.array([[7, 12345]], np.uint64)  # the shared high word with a low word never added
    assert not seen.contains(probe)[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 2**64 - 1)), max_size=40), max_size=12))
def test_merged_runs_are_the_stable_sort_of_every_key_added(batches):
    """Merging runs keeps every key added, each run sorted by the high word, and orders them as a stable
    sort of all adds (ties are common here)."""
    seen = SeenKeys()
    for batch in batches:
        seen.add(np.array(batch, np.uint64).reshape(-1, 2))
    added = np.array([k for b in batches for k in b], np.uint64).reshape(-1, 2)
    for hi, _ in seen.runs:
        assert (hi[1:] >= hi[:-1]).all()
    held = sorted((h, lo) for hi, los in seen.runs for h, lo in zip(hi.tolist(), los.tolist()))
    assert held == sorted(map(tuple, added.tolist()))
    if len(seen.runs) == 1:  # everything merged into one run: exactly the stable sort of the adds
        order = np.argsort(added[:, 0], kind="stable")
        assert seen.runs[0][0].tolist() == added[order, 0].tolist()
        assert seen.runs[0][1].tolist() == added[order, 1].tolist()


def test_an_owner_holds_content_and_id_keys_apart():
    owner = KeyOwner()
    same = text_keys(["x"])
    owner.add(same, np.zeros((0, 2), np.uint64))
    content, ids = owner.lookup(same, same)
    assert content.tolist() == [True] and ids.tolist() == [False]
