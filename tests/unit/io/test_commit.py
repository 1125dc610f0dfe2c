"""pipeline/io/commit.py: worker-side piece writes, receipts, and the driver's shard commits. No Ray.

Blocks are built as a stage would hand them to `write_pieces`; receipts go to a `ShardCommitter` the
way the runner streams them, in any order, split or merged.
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.columns import NROWS, PARENT, REASON, SHARD, SLOT, SPLIT, SRC, STATUS
from pipeline.errors import LedgerError
from pipeline.io.commit import (
    RECEIPT,
    ShardCommitter,
    committed_files,
    covered_rows,
    reject_table,
    remove_garbage,
    rewrite_parts,
    write_pieces,
)
from pipeline.io.dedup import DedupRule, FirstSeen, row_keys, text_keys
from pipeline.io.fs import RunFS
from pipeline.io.image_store import IMAGE_REF
from pipeline.stage import Stage, StageConfig


class Pass(Stage):
    name = "pass"
    config_cls = StageConfig

    def __init__(self, fanout: int | None = 1, ordered: bool = False) -> None:
        super().__init__(StageConfig(), None)
        self._fanout = fanout
        self.ordered_commit = ordered

    @property
    def fanout(self) -> int | None:
        return self._fanout

    def apply(self, ds):
        return ds


class Dedup(Pass):
    """Keeps the first row of each `text` (io/dedup.py): the driver sees keys only."""

    dedup = DedupRule(("text", "id"), "filter:duplicate_text", "error:duplicate_id")

    def __init__(self) -> None:
        super().__init__(ordered=True)

    def dedup_keys(self, kept: pa.Table):
        return row_keys(text_keys(kept["text"].to_pylist()), text_keys(kept["id"].to_pylist()))


def block(shard: str, srcs: list[int], statuses: list[str] | None = None, slots: list[int] | None = None,
          totals: list[int] | None = None, texts: list[str] | None = None) -> pa.Table:
    n = len(srcs)
    statuses = statuses or ["ok"] * n
    cols = {
        "id": [f"{shard}-{s}-{k}" for s, k in zip(srcs, slots or [0] * n)],
        "text": texts or [f"row {shard}/{s}" for s in srcs],
        SHARD: [shard] * n, SRC: pa.array(srcs, pa.int64()), PARENT: [f"p{s}" for s in srcs],
        STATUS: statuses, REASON: ["" if s == "ok" else "filter:dropped" for s in statuses],
    }
    if slots is not None:
        cols[SLOT] = pa.array(slots, pa.int32())
    if totals is not None:
        cols[NROWS] = pa.array(totals, pa.int32())
    return pa.table(cols)


@pytest.fixture
def run_fs(tmp_path) -> RunFS:
    return RunFS.from_uri(str(tmp_path / "run"))


def committer(run_fs: RunFS, stage: Stage, shards: dict[str, int], rewrite=None, decide=None) -> ShardCommitter:
    specs = [SimpleNamespace(shard=s, rows=n) for s, n in shards.items()]
    progress = SimpleNamespace(update=lambda n, rows: None)
    if decide is None and stage.dedup is not None:
        decide = FirstSeen.local(stage.dedup).decide
    return ShardCommitter(run_fs, stage, "02_pass", specs, progress, decide, rewrite)


def receipts(run_fs: RunFS, stage: Stage, table: pa.Table) -> pa.Table:
    return write_pieces(table, run_fs.root, stage, "02_pass", "02_pass")


def markers(run_fs: RunFS) -> dict[str, dict]:
    return {n[:-5]: run_fs.read_json(f"02_pass/_parts/{n}") for n in run_fs.listdir("02_pass/_parts", ".json")}


def test_receipts_hold_no_row_data(run_fs):
    out = receipts(run_fs, Pass(), block("000000", [0, 1, 2], ["ok", "filtered", "ok"]))
    assert out.schema == RECEIPT
    (r,) = out.to_pylist()
    assert (covered_rows(r), r["out"], r["filtered"], json.loads(r["reasons"])) == (
        [(0, 1, 1), (1, 1, 1), (2, 1, 1)], 2, 1, {"filter:dropped": 1})
    assert "row 000000/0" not in json.dumps(r)


def test_a_receipt_codes_its_rows_as_runs_and_stays_small_whatever_the_rows(run_fs):
    """Consecutive input rows with the same (units, expected) are one run: a 3-units-a-row piece of
    2,000 rows is one run, not 2,000 entries; gaps and a row split over pieces start new runs."""
    big = receipts(run_fs, Pass(fanout=3), block("000000", [s for s in range(2000) for _ in range(3)],
                                                 slots=[k for _ in range(2000) for k in range(3)]))
    (r,) = big.to_pylist()
    assert (r["src_first"], r["src_count"], r["src_units"], r["src_expected"]) == ([0], [2000], [3], [3])
    assert big.nbytes < 2000
    split = receipts(run_fs, Pass(fanout=2), block("000001", [0, 0, 1, 3, 3, 4], slots=[0, 1, 0, 0, 1, 0]))
    (r,) = split.to_pylist()
    assert covered_rows(r) == [(0, 2, 2), (1, 1, 2), (3, 2, 2), (4, 1, 2)]
    assert (r["src_first"], r["src_count"]) == ([0, 1, 3, 4], [1, 1, 1, 1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 3), st.integers(0, 2)), min_size=1, max_size=25,
                unique_by=lambda t: t[0]), st.booleans(), st.randoms(use_true_random=False))
def test_the_runs_of_a_receipt_are_the_rows_it_covers_one_by_one(tmp_path_factory, rows, variable, rng):
    """Generated pieces (input rows with gaps, some units of each, a fixed or announced fan-out, rows in
    any order): the receipt's runs give back exactly each row's units here and expected in all."""
    run_fs = RunFS.from_uri(str(tmp_path_factory.mktemp("runs")))
    units = [(src, slot, total if variable else 3) for src, total, extra in rows
             for slot in range(min(total if variable else 3, 1 + extra))]
    rng.shuffle(units)
    table = block("000000", [u[0] for u in units], slots=[u[1] for u in units],
                  totals=[u[2] for u in units] if variable else None)
    (r,) = receipts(run_fs, Pass(fanout=None if variable else 3), table).to_pylist()
    want = sorted({(src, sum(u[0] == src for u in units), total) for src, _, total in units})
    assert covered_rows(r) == want
    assert len(r["src_first"]) <= len(want)


def test_worker_writes_kept_rows_and_rejects_under_the_names_the_receipt_gives(run_fs):
    (r,) = receipts(run_fs, Pass(), block("000000", [0, 1], ["ok", "filtered"])).to_pylist()
    kept = run_fs.read_parquet(r["parts"][0])
    rejected = run_fs.read_parquet(r["rejects"][0]).to_pylist()
    assert kept.column_names == ["id", "text"] and kept.num_rows == 1
    assert (rejected[0]["parent_id"], rejected[0]["reason"]) == ("p1", "filter:dropped")


def test_a_shard_split_over_two_blocks_commits_once_both_arrived(run_fs):
    stage = Pass()
    c = committer(run_fs, stage, {"000000": 4})
    c.add(receipts(run_fs, stage, block("000000", [2, 3])))
    assert markers(run_fs) == {}
    c.add(receipts(run_fs, stage, block("000000", [0, 1])))
    marker = markers(run_fs)["000000"]
    assert marker["rows"] == {"in": 4, "out": 4, "filtered": 0, "rejected": 0}
    # Pieces are listed in row order whatever order they arrived in.
    assert [p.rsplit("/", 1)[1] for p in marker["files"]["parts"]] == [
        "part-000000-000000-000.parquet", "part-000000-000002-000.parquet",
    ]


def test_a_block_holding_two_shards_commits_both(run_fs):
    stage = Pass()
    c = committer(run_fs, stage, {"000000": 2, "000001": 1})
    c.add(receipts(run_fs, stage, pa.concat_tables([block("000000", [0, 1]), block("000001", [0])])))
    c.finish()
    assert sorted(markers(run_fs)) == ["000000", "000001"]


def test_rows_arriving_for_a_committed_shard_are_an_error(run_fs):
    stage = Pass()
    c = committer(run_fs, stage, {"000000": 1})
    first = receipts(run_fs, stage, block("000000", [0]))
    c.add(first)
    with pytest.raises(LedgerError, match="after the shard was committed"):
        c.add(first)  # the same receipt again, as a block sent twice would bring it


def test_a_worker_refuses_to_rewrite_the_files_of_a_committed_shard(run_fs):
    stage = Pass()
    c = committer(run_fs, stage, {"000000": 1})
    c.add(receipts(run_fs, stage, block("000000", [0])))
    (part,) = markers(run_fs)["000000"]["files"]["parts"]
    before = run_fs.read_bytes(part)
    with pytest.raises(LedgerError, match="already committed"):
        receipts(run_fs, stage, block("000000", [0], texts=["computed again, differently"]))
    assert run_fs.read_bytes(part) == before


@pytest.mark.parametrize("reason", ["", None])
def test_a_dropped_row_without_a_reason_is_an_error(run_fs, reason):
    table = block("000000", [0, 1], ["ok", "filtered"])
    table = table.set_column(table.schema.get_field_index(REASON), REASON, pa.array(["", reason], pa.string()))
    with pytest.raises(LedgerError, match="no reason"):
        receipts(run_fs, Pass(), table)
    assert not run_fs.list_files("02_pass")


def test_rows_for_an_unknown_shard_are_an_error(run_fs):
    stage = Pass()
    with pytest.raises(LedgerError, match="not pending"):
        committer(run_fs, stage, {"000000": 1}).add(receipts(run_fs, stage, block("000009", [0])))


def test_a_unit_naming_a_row_beyond_the_shard_is_an_error(run_fs):
    stage = Pass()
    with pytest.raises(LedgerError, match="input row 5"):
        committer(run_fs, stage, {"000000": 2}).add(receipts(run_fs, stage, block("000000", [5])))


def test_a_shard_that_never_completes_fails_finish(run_fs):
    stage = Pass()
    c = committer(run_fs, stage, {"000000": 3})
    c.add(receipts(run_fs, stage, block("000000", [0, 1])))
    with pytest.raises(LedgerError, match="never came back complete"):
        c.finish()
    assert markers(run_fs) == {}


def test_finish_names_the_stage_the_shard_and_its_first_missing_row(run_fs):
    stage = Pass(fanout=2)
    c = committer(run_fs, stage, {"000000": 3})
    c.add(receipts(run_fs, stage, block("000000", [0, 0, 1, 2, 2], slots=[0, 1, 0, 0, 1])))
    with pytest.raises(LedgerError, match=r"pass: .*shard 000000: 2 of its 3 input rows .*first missing: row 1"):
        c.finish()


def edited(table: pa.Table, **values) -> pa.Table:
    """A receipt table with some fields replaced in its one row (a worker that miscounted)."""
    (row,) = table.to_pylist()
    return pa.Table.from_pylist([{**row, **values}], schema=RECEIPT)


@pytest.mark.parametrize("fanout", [1, None])
def test_a_receipt_that_lost_a_unit_from_its_counts_fails_the_commit(run_fs, fanout):
    # `in` comes from the plan (2 rows, fan-out 1) or the rows' `_n` (1 + 2 units), not from the counts.
    stage = Pass(fanout=fanout)
    c = committer(run_fs, stage, {"000000": 2})
    totals = None if fanout else [1, 2, 2]
    srcs, slots = ([0, 1], None) if fanout else ([0, 1, 1], [0, 0, 1])
    table = block("000000", srcs, ["ok", "ok", "filtered"][: len(srcs)], slots=slots, totals=totals)
    got = receipts(run_fs, stage, table)
    want_in = 2 if fanout else 3
    with pytest.raises(LedgerError, match=rf"pass shard 000000: ledger mismatch: in={want_in} but "
                                          rf"out\+filtered\+rejected={want_in - 1}"):
        c.add(edited(got, out=got["out"][0].as_py() - 1))
    assert markers(run_fs) == {}


def test_part_files_holding_fewer_rows_than_were_kept_fail_the_commit(run_fs):
    stage = Pass()
    c = committer(run_fs, stage, {"000000": 2})
    got = receipts(run_fs, stage, block("000000", [0, 1]))
    with pytest.raises(LedgerError, match="pass shard 000000: its part files hold 1 rows but 2 were kept"):
        c.add(edited(got, part_rows=[1]))
    assert markers(run_fs) == {}


def test_a_dedup_naming_a_row_the_shard_did_not_keep_is_an_error(run_fs):
    def wild(keys):
        return {len(keys): ("filtered", "filter:duplicate_text")}

    stage = Dedup()
    c = committer(run_fs, stage, {"000000": 2}, lambda *a: pytest.fail("no rewrite for a bad override"), wild)
    with pytest.raises(LedgerError, match=r"row position\(s\) \[2\], but the shard kept 2 rows"):
        c.add(receipts(run_fs, stage, block("000000", [0, 1], texts=["a", "b"])))


def test_fixed_fanout_waits_for_every_slot_of_a_row_split_across_blocks(run_fs):
    stage = Pass(fanout=3)
    c = committer(run_fs, stage, {"000000": 1})
    c.add(receipts(run_fs, stage, block("000000", [0, 0], slots=[0, 1])))
    assert markers(run_fs) == {}
    c.add(receipts(run_fs, stage, block("000000", [0], slots=[2])))
    assert markers(run_fs)["000000"]["rows"]["in"] == 3


def test_variable_fanout_counts_units_by_the_n_column(run_fs):
    stage = Pass(fanout=None)
    c = committer(run_fs, stage, {"000000": 2})
    table = block("000000", [0, 0, 1], ["ok", "filtered", "filtered"], slots=[0, 1, 0], totals=[2, 2, 1])
    c.add(receipts(run_fs, stage, table))
    marker = markers(run_fs)["000000"]
    assert (marker["input_rows"], marker["rows"]) == (2, {"in": 3, "out": 1, "filtered": 2, "rejected": 0})


def test_variable_fanout_with_more_units_than_announced_is_an_error(run_fs):
    stage = Pass(fanout=None)
    c = committer(run_fs, stage, {"000000": 1})
    with pytest.raises(LedgerError, match="produced 2 units, expected 1"):
        c.add(receipts(run_fs, stage, block("000000", [0, 0], slots=[0, 1], totals=[1, 1])))


def test_variable_fanout_units_of_one_row_must_agree_on_n(run_fs):
    with pytest.raises(LedgerError, match="disagree on `_n`"):
        receipts(run_fs, Pass(fanout=None), block("000000", [0, 0], slots=[0, 1], totals=[2, 3]))


def test_variable_fanout_without_n_column_is_an_error(run_fs):
    with pytest.raises(LedgerError, match="_n"):
        receipts(run_fs, Pass(fanout=None), block("000000", [0]))


def test_ordered_commit_holds_a_later_shard_until_the_earlier_one(run_fs):
    stage = Pass(ordered=True)
    c = committer(run_fs, stage, {"000000": 1, "000001": 1})
    c.add(receipts(run_fs, stage, block("000001", [0])))
    assert markers(run_fs) == {}
    c.add(receipts(run_fs, stage, block("000000", [0])))
    assert sorted(markers(run_fs)) == ["000000", "000001"]


def test_dedup_overrides_move_rows_to_rejects_without_rows_on_the_driver(run_fs):
    stage = Dedup()

    def rewrite(pieces, overrides):
        return rewrite_parts(run_fs.root, "02_pass", "02_pass", pieces, overrides)

    c = committer(run_fs, stage, {"000000": 2, "000001": 2}, rewrite)
    c.add(receipts(run_fs, stage, block("000000", [0, 1], texts=["a", "b"])))
    c.add(receipts(run_fs, stage, block("000001", [0, 1], texts=["b", "c"])))
    marker = markers(run_fs)["000001"]
    assert marker["rows"] == {"in": 2, "out": 1, "filtered": 1, "rejected": 0}
    assert run_fs.read_parquet(marker["files"]["parts"][0])["text"].to_pylist() == ["c"]
    (gone,) = run_fs.read_parquet(marker["files"]["rejects"][0]).to_pylist()
    assert (gone["text"], gone["reason"]) == ("b", "filter:duplicate_text")


def test_markers_wait_for_a_running_rewrite_and_keep_their_order(run_fs):
    # Shard 1 repeats shard 0's row (its rewrite runs "in Ray": a future we finish by hand); shard 2 has
    # none. Shard 2's marker must not appear before shard 1's: a resume rebuilds dedup state from committed
    # shards, so a later shard committed without an earlier one would change what counts as first.
    stage = Dedup()
    pending: list[tuple[Future, tuple]] = []

    def rewrite(pieces, overrides):
        future: Future = Future()
        pending.append((future, (pieces, overrides)))
        return future

    c = committer(run_fs, stage, {"000000": 1, "000001": 2, "000002": 1}, rewrite)
    c.add(receipts(run_fs, stage, block("000000", [0], texts=["a"])))
    c.add(receipts(run_fs, stage, block("000001", [0, 1], texts=["a", "b"])))
    c.add(receipts(run_fs, stage, block("000002", [0], texts=["c"])))
    assert sorted(markers(run_fs)) == ["000000"] and len(pending) == 1
    future, (pieces, overrides) = pending[0]
    future.set_result(rewrite_parts(run_fs.root, "02_pass", "02_pass", pieces, overrides))
    c.finish()
    got = markers(run_fs)
    assert sorted(got) == ["000000", "000001", "000002"]
    assert got["000001"]["rows"] == {"in": 2, "out": 1, "filtered": 1, "rejected": 0}
    assert run_fs.read_parquet(got["000001"]["files"]["parts"][0])["text"].to_pylist() == ["b"]
    assert len(got["000001"]["files"]["rejects"]) == 1


def test_a_failed_rewrite_fails_the_stage_and_writes_no_marker_for_it(run_fs):
    stage = Dedup()

    def rewrite(pieces, overrides):
        future: Future = Future()
        future.set_exception(OSError("disk full"))
        return future

    c = committer(run_fs, stage, {"000000": 1, "000001": 2}, rewrite)
    with pytest.raises(OSError, match="disk full"):  # as soon as the driver sees it has finished
        c.add(receipts(run_fs, stage, block("000000", [0], texts=["a"])))
        c.add(receipts(run_fs, stage, block("000001", [0, 1], texts=["a", "b"])))
        c.finish()
    assert sorted(markers(run_fs)) == ["000000"]


def test_at_most_max_rewrites_wait_at_once(run_fs):
    stage = Dedup()
    futures: list[Future] = []

    def rewrite(pieces, overrides):
        future: Future = Future()
        futures.append(future)
        # Finish it at once, so that a blocking wait on it returns.
        future.set_result(rewrite_parts(run_fs.root, "02_pass", "02_pass", pieces, overrides))
        return future

    n = ShardCommitter.MAX_REWRITES + 3
    c = committer(run_fs, stage, {f"{i:06d}": 2 for i in range(n)}, rewrite)
    waiting = []
    for i in range(n):  # every shard after the first repeats the first one's text
        c.add(receipts(run_fs, stage, block(f"{i:06d}", [0, 1], texts=["t0", f"t{i}" if i else "u0"])))
        waiting.append(len(c.waiting))
    c.finish()
    assert len(futures) == n - 1
    assert max(waiting) <= ShardCommitter.MAX_REWRITES and len(markers(run_fs)) == n


def test_repeats_inside_a_piece_are_held_by_the_worker_and_need_no_rewrite(run_fs):
    stage = Dedup()

    def rewrite(pieces, overrides):
        raise AssertionError("no shard needs a rewrite: every repeat is inside its piece")

    c = committer(run_fs, stage, {"000000": 3, "000001": 2}, rewrite)
    first = receipts(run_fs, stage, block("000000", [0, 1, 2], texts=["a", "a", "b"]))
    assert first["held_pos"].to_pylist() == [[1]] and first["part_rows"].to_pylist() == [[2]]
    c.add(first)
    c.add(receipts(run_fs, stage, block("000001", [0, 1], texts=["c", "c"])))
    c.finish()
    got = markers(run_fs)
    assert got["000000"]["rows"] == {"in": 3, "out": 2, "filtered": 1, "rejected": 0}
    assert got["000000"]["reasons"] == {"filter:duplicate_text": 1}
    assert run_fs.read_parquet(got["000000"]["files"]["parts"][0])["text"].to_pylist() == ["a", "b"]
    (gone,) = [r for rel in got["000000"]["files"]["rejects"] for r in run_fs.read_parquet(rel).to_pylist()]
    assert (gone["id"], gone["reason"], gone["status"]) == ("000000-1-0", "filter:duplicate_text", "filtered")
    # The held rows are named by no marker: garbage once their shard is committed.
    held = run_fs.list_files("02_pass/_held")
    assert len(held) == 2 and not set(held) & {f for m in got.values() for fs in m["files"].values() for f in fs}
    remove_garbage(run_fs, "02_pass", "02_pass")
    assert run_fs.list_files("02_pass/_held") == []


def test_a_dedup_stage_cannot_split_its_parts(run_fs):
    stage = Dedup()
    table = block("000000", [0, 1], texts=["a", "b"]).append_column(SPLIT, pa.array(["train", "train"]))
    with pytest.raises(LedgerError, match="one part per piece"):
        receipts(run_fs, stage, table)


def test_files_written_but_never_committed_are_garbage(run_fs):
    stage = Pass()
    c = committer(run_fs, stage, {"000000": 1, "000001": 1})
    c.add(receipts(run_fs, stage, block("000000", [0], ["filtered"])))
    # A crash between the worker's write and the driver's marker: files exist, no marker names them.
    orphan = receipts(run_fs, stage, block("000001", [0], ["ok"])).to_pylist()[0]["parts"][0]
    run_fs.write_bytes("02_pass/.part-x.parquet.1234.tmp", b"half")
    run_fs.write_bytes("02_pass/ids.parquet", b"not a part: an index file beside the parts")
    # Temporaries of a marker and of the manifest a crash interrupted.
    run_fs.write_bytes("02_pass/_parts/.000001.json.5678.tmp", b"{")
    run_fs.write_bytes("02_pass/._manifest.json.9abc.tmp", b"{")
    assert remove_garbage(run_fs, "02_pass", "02_pass") == 4
    assert run_fs.exists("02_pass/ids.parquet") and run_fs.exists("02_pass/_parts/000000.json")
    assert run_fs.list_files("02_pass/_parts") == ["02_pass/_parts/000000.json"]
    assert not run_fs.exists(orphan)
    assert committed_files(run_fs, "02_pass") == ([], ["02_pass/_rejects/part-000000-000000-000.parquet"])
    assert run_fs.exists("02_pass/_rejects/part-000000-000000-000.parquet")


def test_rejects_keep_image_references_and_drop_image_bytes():
    table = pa.table({
        "id": ["a"], "image": pa.array([{"sha256": "f" * 64, "width": 2, "height": 2, "format": "png"}], IMAGE_REF),
        "raw": pa.array([b"xx"], pa.binary()), PARENT: ["p"], STATUS: ["rejected"], REASON: ["error:x"],
    })
    out = reject_table(table)
    assert out.column_names == ["id", "image", "parent_id", "reason", "status"]


def test_written_parts_are_plain_parquet_without_internal_columns(run_fs):
    (r,) = receipts(run_fs, Pass(), block("000000", [0])).to_pylist()
    assert pq.read_schema(run_fs.path(r["parts"][0])).names == ["id", "text"]


class Split(Pass):
    """Sends rows whose text ends in "v" to validation, the rest to train (as export does by doc_id)."""

    part_prefix = "train"

    def part_prefixes(self) -> tuple[str, ...]:
        return ("train", "validation")


def split_block(shard: str, srcs: list[int], splits: list[str], statuses: list[str] | None = None) -> pa.Table:
    table = block(shard, srcs, statuses)
    return table.append_column(SPLIT, pa.array(splits, pa.string()))


def test_a_piece_with_a_split_column_writes_one_file_per_split_named_by_the_split(run_fs):
    (r,) = receipts(run_fs, Split(), split_block("000000", [0, 1, 2], ["validation", "train", "validation"])).to_pylist()
    names = [p.rsplit("/", 1)[1] for p in r["parts"]]
    assert (names, r["part_rows"]) == (
        ["train-000000-000000-000.parquet", "validation-000000-000000-000.parquet"], [1, 2]
    )
    assert run_fs.read_parquet(r["parts"][1])["id"].to_pylist() == ["000000-0-0", "000000-2-0"]


def test_split_files_hold_no_internal_split_column(run_fs):
    (r,) = receipts(run_fs, Split(), split_block("000000", [0], ["validation"])).to_pylist()
    assert pq.read_schema(run_fs.path(r["parts"][0])).names == ["id", "text"]


def test_a_split_the_stage_does_not_declare_is_an_error(run_fs):
    with pytest.raises(LedgerError, match=r"split\(s\) \['test'\]"):
        receipts(run_fs, Split(), split_block("000000", [0], ["test"]))


def test_filtered_rows_of_a_split_stage_go_to_rejects_not_to_a_split_file(run_fs):
    (r,) = receipts(run_fs, Split(), split_block("000000", [0, 1], ["train", "validation"], ["ok", "filtered"])).to_pylist()
    assert ([p.rsplit("/", 1)[1] for p in r["parts"]], len(r["rejects"])) == (["train-000000-000000-000.parquet"], 1)


def test_the_marker_lists_the_files_of_every_split_in_row_order(run_fs):
    stage = Split()
    c = committer(run_fs, stage, {"000000": 4})
    # The later piece arrives first and holds train rows only; the earlier piece only validation rows.
    c.add(receipts(run_fs, stage, split_block("000000", [2, 3], ["train", "train"])))
    c.add(receipts(run_fs, stage, split_block("000000", [0, 1], ["validation", "validation"])))
    assert [p.rsplit("/", 1)[1] for p in markers(run_fs)["000000"]["files"]["parts"]] == [
        "validation-000000-000000-000.parquet", "train-000000-000002-000.parquet",
    ]


def test_uncommitted_files_of_every_split_prefix_are_garbage(run_fs):
    stage = Split()
    c = committer(run_fs, stage, {"000000": 1, "000001": 2})
    c.add(receipts(run_fs, stage, split_block("000000", [0], ["validation"])))
    orphans = receipts(run_fs, stage, split_block("000001", [0, 1], ["train", "validation"])).to_pylist()[0]["parts"]
    run_fs.write_bytes("02_pass/.validation-x.parquet.1234.tmp", b"half")
    # A commit hook's rewrite names its rejects after the part it rewrote (prefix included).
    run_fs.write_bytes("02_pass/_rejects/train-000001-000000-000d.parquet", b"uncommitted rewrite")
    assert remove_garbage(run_fs, "02_pass", "02_pass", stage.part_prefixes()) == 4
    assert not any(run_fs.exists(p) for p in orphans)
    assert run_fs.list_files("02_pass/_rejects") == []
    assert run_fs.exists("02_pass/validation-000000-000000-000.parquet")


def test_a_single_prefix_garbage_sweep_leaves_other_prefixes_alone(run_fs):
    run_fs.write_bytes("02_pass/validation-000009-000000-000.parquet", b"not this sweep's name")
    assert remove_garbage(run_fs, "02_pass", "02_pass", "train") == 0


def test_a_stage_with_a_row_group_cap_writes_groups_under_the_cap(run_fs):
    class Capped(Pass):
        def row_group_bytes(self) -> int:
            return 250

    table = block("000000", [0, 1, 2, 3, 4], texts=["x" * 100] * 5)
    (r,) = receipts(run_fs, Capped(), table).to_pylist()
    meta = pq.ParquetFile(run_fs.path(r["parts"][0])).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2, 2, 1]
