"""Workers write, the driver commits (DESIGN §2b).

The last step of every stage's Ray Data pipeline is `write_pieces`, run by the worker that holds
the block: it splits the block by shard, writes each shard piece's kept rows (one file per split
when the stage sets `_split`, named `<split>-<shard>-<src>-<slot>.parquet`) and rejects as Parquet
files under their final names in the run dir (each file itself written to a temporary name and
renamed), and returns one small *receipt* per piece: shard id, the input rows it covers with their
unit counts, status counts, reason counts, file names, for stages that dedup, the kept rows'
keys (io/dedup.py), and the identities of local files its rows read (the `_read` column; ingest's images). Row data
never reaches the driver.

A dedup stage's worker also decides its piece as if no earlier shard held its keys (the repeats inside the
piece, by the same rule): the rows that decision drops are *held*, written apart (their rows in full under
`_held/`, their reject rows in a reject file of their own), and the receipt names them by position. The
committer's decision in shard order (io/dedup.FirstSeen) is the truth: where it equals the piece's own, the
files are final as written; where it differs, a rewrite rebuilds the piece's rows from its part and its held
rows, in their order, and applies the committer's decision (so a held row can come back).

`ShardCommitter` (driver) collects receipts, and once every input row of a shard is accounted for
(each input row's units all arrived: the stage's fixed fan-out or its `_n` column), it checks the
ledger (`in`, the units the plan's rows stand for, against the receipts' out + filtered + rejected) and
writes the shard's marker `_parts/<shard>.json`, last. A shard counts as done only when its
marker exists; files that no marker names are garbage (a crash between a piece's write and its
commit) and `remove_garbage` deletes them on resume and when the stage completes. This holds when
Ray Data splits a shard into several blocks or merges shards into one: pieces are per shard.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import faults
from pipeline.columns import (
    FILTERED,
    INTERNAL,
    NROWS,
    OK,
    PARENT,
    READ,
    REASON,
    REJECTED,
    SHARD,
    SLOT,
    SPLIT,
    SRC,
    STATUS,
)
from pipeline.errors import LedgerError, StageInputError
from pipeline.io.dedup import decide_alone, from_bytes, to_bytes
from pipeline.io.fs import RunFS
from pipeline.io.manifest import MANIFEST, PARTS_MARK, REJECTS, check_ledger

# A dedup stage's held rows (in full, as a part would hold them) until their shard is committed.
HELD = "_held"

RECEIPT = pa.schema([
    ("shard", pa.string()),
    # The input rows the piece covers, run-length coded: runs of consecutive rows (first row, how many)
    # that each produced `units` units here and `expected` in all. A receipt stays a few runs long
    # whatever the rows (a list per row cost ~120 bytes a row).
    ("src_first", pa.list_(pa.int64())),
    ("src_count", pa.list_(pa.int64())),
    ("src_units", pa.list_(pa.int32())),
    ("src_expected", pa.list_(pa.int32())),
    ("out", pa.int64()),
    ("filtered", pa.int64()),
    ("rejected", pa.int64()),
    ("reasons", pa.string()),
    ("parts", pa.list_(pa.string())),
    ("part_rows", pa.list_(pa.int64())),
    ("rejects", pa.list_(pa.string())),
    # A dedup stage's kept-row keys (io/dedup.py: 32 bytes a row), held rows included, in row order, else null.
    ("keys", pa.binary()),
    # A dedup stage's held rows (see above): their positions among the kept rows (`out` counts them; the
    # parts hold the others), the status the piece's own decision gave each, the file holding them in full
    # and the file of their reject rows; empty or null when the piece holds none.
    ("held_pos", pa.list_(pa.int64())),
    ("held_status", pa.list_(pa.string())),
    ("held", pa.string()),
    ("held_rejects", pa.string()),
    # Identities of the local files the piece's rows read (the `_read` column: a JSON list), if any.
    ("read", pa.string()),
])


def reject_table(dropped: pa.Table) -> pa.Table:
    """Rejects keep the row's id, its parent row's id, the reason and the columns that are not bytes
    (image bytes are dropped; image references are kept)."""

    def has_bytes(tp: pa.DataType) -> bool:
        if pa.types.is_binary(tp) or pa.types.is_large_binary(tp):
            return True
        if pa.types.is_struct(tp):
            return any(has_bytes(tp.field(i).type) for i in range(tp.num_fields))
        if pa.types.is_list(tp) or pa.types.is_large_list(tp):
            return has_bytes(tp.value_type)
        return False

    keep = [c for c in dropped.column_names if c not in INTERNAL and not has_bytes(dropped.schema.field(c).type)]
    if "id" not in keep:
        raise StageInputError("rejects need an `id` column; the stage must set one on every row")
    out = dropped.select(keep)
    if PARENT in dropped.column_names and "parent_id" not in keep:
        out = out.append_column("parent_id", dropped[PARENT])
    return out.append_column("reason", dropped[REASON]).append_column("status", dropped[STATUS])


def write_pieces(table: pa.Table, run_uri: str, stage, stage_dir: str, parts_dir: str) -> pa.Table:
    """Ray Data task, the last step of a stage: write this block's rows, return receipts only."""
    run_fs = RunFS.from_uri(run_uri)
    receipts = []
    if table.num_rows == 0:
        return RECEIPT.empty_table()
    for shard in pc.unique(table[SHARD]).to_pylist():
        if run_fs.exists(marker_path(stage_dir, shard)):
            # A block computed again (a retried or reconstructed task) must not overwrite the files a
            # committed marker names; the driver would refuse its receipt anyway.
            raise LedgerError(f"{stage.name}: rows for shard {shard!r}, which is already committed; "
                              "its files are left as they are")
        piece = select(table, pc.equal(table[SHARD], shard))
        faults.batch(stage.name, piece)
        receipts.append(_write_piece(piece, shard, run_fs, stage, stage_dir, parts_dir))
    return pa.Table.from_pylist(receipts, schema=RECEIPT)


def marker_path(stage_dir: str, shard: str) -> str:
    """The shard's commit marker, written last: the shard is done once it exists."""
    return f"{stage_dir}/{PARTS_MARK}/{shard}.json"


def select(table: pa.Table, mask) -> pa.Table:
    """`table.filter(mask)`, without the copy when the mask keeps every row or none (image rows make
    each copy cost as much as the images)."""
    kept = pc.sum(mask).as_py() or 0
    if kept == table.num_rows:
        return table
    return table.slice(0, 0) if kept == 0 else table.filter(mask)


def _in_order(piece: pa.Table, has_slot: bool) -> pa.Table:
    keys = [(SRC, "ascending")] + ([(SLOT, "ascending")] if has_slot else [])
    src = piece[SRC].to_numpy()
    steps = np.diff(src)
    if has_slot:
        slot = piece[SLOT].to_numpy()
        ordered = bool(np.all((steps > 0) | ((steps == 0) & (np.diff(slot) > 0))))
    else:
        ordered = bool(np.all(steps >= 0))
    return piece if ordered else piece.sort_by(keys)


def _write_piece(piece: pa.Table, shard: str, run_fs: RunFS, stage, stage_dir: str, parts_dir: str) -> dict:
    has_slot = SLOT in piece.column_names
    piece = _in_order(piece, has_slot)
    first_src = piece[SRC][0].as_py()
    first_slot = piece[SLOT][0].as_py() if has_slot else 0
    name = f"{shard}-{first_src:06d}-{first_slot:03d}"
    status = piece[STATUS]
    unknown = set(pc.unique(status).to_pylist()) - {OK, FILTERED, REJECTED}
    if unknown:
        raise LedgerError(f"{stage.name}: unknown row status {sorted(map(str, unknown))} in shard {shard}")
    ok = pc.equal(status, OK)
    kept, dropped = select(piece, ok), select(piece, pc.invert(ok))
    if dropped.num_rows and pc.any(pc.equal(pc.fill_null(dropped[REASON], ""), "")).as_py():
        raise LedgerError(f"{stage.name}: a filtered or rejected row of shard {shard} has no reason "
                          "(every unit not kept needs one in _rejects/)")
    keys, hold, held = None, {}, {"held_pos": [], "held_status": [], "held": None, "held_rejects": None}
    if stage.dedup is not None:
        if SPLIT in kept.column_names:
            raise LedgerError(f"{stage.name}: a dedup stage writes one part per piece; it cannot set `{SPLIT}`")
        keys = stage.dedup_keys(_public(kept))
        hold = decide_alone(keys, stage.dedup)
        if hold:
            mask = pa.array(np.isin(np.arange(kept.num_rows), list(hold)))
            held_rows, kept = kept.filter(mask), kept.filter(pc.invert(mask))
            finished = stage.finish_part(_public(held_rows))
            order = sorted(hold)
            held = {"held_pos": order, "held_status": [hold[i][0] for i in order],
                    "held": f"{stage_dir}/{HELD}/{stage.part_prefix}-{name}.parquet",
                    "held_rejects": f"{stage_dir}/{REJECTS}/part-{name}s.parquet"}
            run_fs.write_parquet(held["held"], finished, stage.row_group_bytes())
            run_fs.write_parquet(held["held_rejects"], dedup_rejects(finished, [hold[i] for i in order]))
    parts, part_rows, rejects = [], [], []
    for prefix, rows in _splits(kept, stage, shard):
        rel = f"{parts_dir}/{prefix}-{name}.parquet"
        run_fs.write_parquet(rel, stage.finish_part(_public(rows)), stage.row_group_bytes())
        parts.append(rel)
        part_rows.append(rows.num_rows)
    if dropped.num_rows:
        rel = f"{stage_dir}/{REJECTS}/part-{name}.parquet"
        run_fs.write_parquet(rel, reject_table(dropped))
        rejects = [rel]
    first, count, units, expected = _coverage(piece, stage.fanout)
    counts = Counter(status.to_pylist())
    read = None
    if READ in piece.column_names:
        entries = {json.dumps(e, sort_keys=True) for v in piece[READ].to_pylist() if v for e in json.loads(v)}
        read = json.dumps([json.loads(e) for e in sorted(entries)]) if entries else None
    return {
        "shard": shard, "src_first": first, "src_count": count, "src_units": units, "src_expected": expected,
        "out": counts.get(OK, 0), "filtered": counts.get(FILTERED, 0), "rejected": counts.get(REJECTED, 0),
        "reasons": json.dumps(dict(Counter(dropped[REASON].to_pylist()))),
        "parts": parts, "part_rows": part_rows, "rejects": rejects, "read": read,
        "keys": None if keys is None else to_bytes(keys), **held,
    }


def _public(rows: pa.Table) -> pa.Table:
    return rows.drop_columns([c for c in rows.column_names if c in INTERNAL])


def dedup_rejects(rows: pa.Table, decided: list[tuple[str, str]]) -> pa.Table:
    """Reject rows for part rows (public columns) a dedup turned away, `decided` their (status, reason)s."""
    rows = rows.append_column(STATUS, pa.array([s for s, _ in decided], pa.string()))
    return reject_table(rows.append_column(REASON, pa.array([r for _, r in decided], pa.string())))


def _splits(kept: pa.Table, stage, shard: str) -> list[tuple[str, pa.Table]]:
    """(file prefix, rows) per split of the kept rows, in `stage.part_prefixes()` order; without a
    `_split` column every kept row goes under the stage's `part_prefix`."""
    if not kept.num_rows:
        return []
    if SPLIT not in kept.column_names:
        return [(stage.part_prefix, kept)]
    prefixes = stage.part_prefixes()
    unknown = set(pc.unique(kept[SPLIT]).to_pylist()) - set(prefixes)
    if unknown:
        raise LedgerError(
            f"{stage.name}: rows of shard {shard} name split(s) {sorted(map(str, unknown))}; "
            f"the stage declares {list(prefixes)} (Stage.part_prefixes)"
        )
    out = [(p, select(kept, pc.equal(kept[SPLIT], p))) for p in prefixes]
    return [(p, rows) for p, rows in out if rows.num_rows]


def _coverage(piece: pa.Table, fanout: int | None) -> tuple[list[int], list[int], list[int], list[int]]:
    """The input rows the piece covers, as runs of consecutive rows that each produced the same units
    here and expect the same units in all: (first rows, run lengths, units, expected)."""
    srcs = piece[SRC].to_numpy()
    rows, first_unit, units = np.unique(srcs, return_index=True, return_counts=True)
    if fanout is None:
        if NROWS not in piece.column_names:
            raise LedgerError("a stage with a variable fan-out must set `_n` (units of the input row) on every unit")
        announced = piece[NROWS].to_numpy(zero_copy_only=False)
        totals = announced[first_unit]
        differs = np.flatnonzero(announced != totals[np.searchsorted(rows, srcs)])
        if len(differs):
            src = srcs[differs[0]]
            raise LedgerError(f"the units of input row {src} disagree on `_n` "
                              f"({totals[np.searchsorted(rows, src)]} and {announced[differs[0]]})")
    else:
        totals = np.full(len(rows), fanout, np.int64)
    starts = np.ones(len(rows), bool)
    starts[1:] = (np.diff(rows) != 1) | (units[1:] != units[:-1]) | (totals[1:] != totals[:-1])
    at = np.flatnonzero(starts)
    lengths = np.diff(np.append(at, len(rows)))
    return rows[at].tolist(), lengths.tolist(), units[at].tolist(), totals[at].astype(np.int64).tolist()


def covered_rows(receipt: dict) -> list[tuple[int, int, int]]:
    """(input row, units here, units expected) for every row a receipt covers, in row order."""
    return [(src, n, total)
            for first, count, n, total in zip(receipt["src_first"], receipt["src_count"], receipt["src_units"],
                                              receipt["src_expected"])
            for src in range(first, first + count)]


class ShardCommitter:
    """Driver side: receipts in, one marker per finished shard out (ledger checked, marker last).

    `decide(keys)` (a dedup stage: io/dedup.FirstSeen.decide) takes a shard's kept-row keys, in shard
    order, and returns kept-row position -> (status, reason) for the rows it turns away. Where that
    equals what the shard's pieces decided themselves (their held rows), nothing is rewritten.
    Otherwise `rewrite(pieces, overrides)` (`rewrite_parts`) applies the decisions to the files already
    written (a Ray actor in the runner, runner.Rewriters, so rows stay off the driver); it returns the new (parts, part_rows,
    rejects), or a `concurrent.futures.Future` of them. Rewrites run while later receipts are taken in
    (`decide` itself runs in shard order, on the driver); markers are still written in the order the
    shards were decided, each once its rewrite has finished, at most MAX_REWRITES waiting at once.
    """

    MAX_REWRITES = 8

    def __init__(self, run_fs: RunFS, stage, stage_dir: str, pending, progress,
                 decide: Callable | None = None, rewrite: Callable | None = None) -> None:
        self.run_fs, self.stage, self.stage_dir = run_fs, stage, stage_dir
        self.specs = {s.shard: s for s in pending}
        self.order = [s.shard for s in pending]
        self.pieces: dict[str, list[dict]] = {}
        self.units: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # Input rows of each shard whose units have all arrived.
        self.complete: dict[str, int] = {}
        self.ready: set[str] = set()
        self.committed: set[str] = set()
        self.decide, self.progress, self.rewrite = decide, progress, rewrite
        if decide is not None and not stage.ordered_commit:
            raise ValueError(f"{stage.name}: a dedup decides shards in shard order; the stage must set ordered_commit")
        self.receipt_bytes = 0
        # Decided shards whose marker is not written yet, in decision order: (shard, marker, future).
        self.waiting: deque[tuple[str, dict, Future | None]] = deque()

    def add(self, receipts: pa.Table) -> None:
        self.receipt_bytes += receipts.nbytes
        for receipt in receipts.to_pylist():
            self._accept(receipt)
        self._flush()
        self._write_markers(block=False)

    def _accept(self, receipt: dict) -> None:
        shard = receipt["shard"]
        where = f"{self.stage.name}: shard {shard!r}"
        if shard in self.committed:
            raise LedgerError(f"{where}: rows arrived after the shard was committed (a block was sent twice)")
        if shard not in self.specs:
            raise LedgerError(f"{where}: rows for a shard that is not pending in this run")
        rows = self.specs[shard].rows
        # Per input row: units arrived so far, and units expected (-1 while none has arrived).
        got, want = self.units.setdefault(shard, (np.zeros(rows, np.int64), np.full(rows, -1, np.int64)))
        for first, count, n, expected in zip(receipt["src_first"], receipt["src_count"], receipt["src_units"],
                                             receipt["src_expected"]):
            if first < 0 or first + count > rows:
                raise LedgerError(f"{where}: a unit names input row {first if first < 0 else max(first, rows)}, "
                                  f"but the shard has {rows} rows")
            span = slice(first, first + count)
            got[span] += n
            want[span] = np.where(want[span] == -1, expected, want[span])
            bad = np.flatnonzero((want[span] != expected) | (got[span] > expected))
            if len(bad):
                src = first + int(bad[0])
                raise LedgerError(f"{where}: input row {src} produced {got[src]} units, expected {expected}")
        done = int(np.count_nonzero(got == want))
        self.complete[shard] = done
        self.pieces.setdefault(shard, []).append(receipt)
        if done == rows:
            self.ready.add(shard)

    def _flush(self) -> None:
        while self.order:
            if self.order[0] in self.ready:
                shard = self.order[0]
            elif self.stage.ordered_commit:
                return
            else:
                shard = next((s for s in self.order if s in self.ready), None)
                if shard is None:
                    return
            self._commit(shard)
            self.order.remove(shard)
            self.ready.discard(shard)
            self.committed.add(shard)

    def _commit(self, shard: str) -> None:
        spec = self.specs[shard]
        # Pieces sort by their first (input row, unit): the file order a clean run has. The name after
        # the prefix carries it (`<prefix>-<shard>-<src>-<slot>`; a piece may hold only validation rows).
        pieces = sorted(self.pieces.pop(shard), key=lambda r: _piece_key((r["parts"] + r["rejects"] + [r["held"]])[0]))
        where = f"{self.stage.name} shard {shard}"
        # `in` is what the shard was given, not the sum it is checked against: the plan's rows times the
        # stage's fan-out, or (variable fan-out) the units each of the plan's rows announced (`_n`).
        rows = {"in": self._units_in(spec, self.units.pop(shard)), "out": 0, "filtered": 0, "rejected": 0}
        self.complete.pop(shard, None)
        reasons: Counter = Counter()
        for r in pieces:
            rows["out"] += r["out"]
            rows["filtered"] += r["filtered"]
            rows["rejected"] += r["rejected"]
            reasons.update(json.loads(r["reasons"]))
        parts = [p for r in pieces for p in r["parts"]]
        part_rows = [n for r in pieces for n in r["part_rows"]]
        rejects = [p for r in pieces for p in r["rejects"]]
        held = sum(len(r["held_pos"] or ()) for r in pieces)
        check_ledger(where, rows)
        if sum(part_rows) + held != rows["out"]:
            also = f" (and {held} held)" if held else ""
            raise LedgerError(f"{where}: its part files hold {sum(part_rows)} rows{also} but {rows['out']} were kept; "
                              "the shard is not committed (rerun to redo it)")
        overrides = self._overrides(pieces)
        outside = sorted(p for p in overrides if not 0 <= p < rows["out"])
        if outside:
            raise LedgerError(f"{where}: dedup turned away row position(s) {outside[:5]}, but the shard "
                              f"kept {rows['out']} rows")
        guesses = self._guesses(pieces)
        future = None
        if overrides == {p: v for g in guesses for p, v in g.items()}:
            # Every piece decided itself as the shard order does: its files are final as written.
            rejects += [r["held_rejects"] for r in pieces if r["held_rejects"]]
        else:
            offset, sent = 0, []
            for r, guess in zip(pieces, guesses):
                sent.append({"parts": r["parts"], "part_rows": r["part_rows"], "rows": r["out"], "held": r["held"],
                             "held_pos": r["held_pos"] or [], "held_rejects": r["held_rejects"],
                             "guess": {p - offset: v for p, v in guess.items()}})
                offset += r["out"]
            future = _as_future(self.rewrite(sent, overrides))
        for status, reason in overrides.values():
            rows["out"] -= 1
            rows[status] += 1
            reasons[reason] += 1
        marker = {
            "shard": shard, "input_rows": spec.rows, "rows": rows, "reasons": dict(reasons),
            "files": {"parts": parts, "part_rows": part_rows, "rejects": rejects},
        }
        read = {json.dumps(e, sort_keys=True) for r in pieces for e in json.loads(r.get("read") or "[]")}
        if read:
            marker["read"] = [json.loads(e) for e in sorted(read)]
        self.waiting.append((shard, marker, future))
        if sum(f is not None for _, _, f in self.waiting) > self.MAX_REWRITES:
            self._write_markers(block=True, keep=self.MAX_REWRITES)

    def _units_in(self, spec, units: tuple[np.ndarray, np.ndarray]) -> int:
        """The units the shard's planned input rows stand for: rows × fan-out from the plan, or the sum of
        the `_n` its rows announced (each of the planned rows has announced one: the shard is complete)."""
        if self.stage.fanout is not None:
            return spec.rows * self.stage.fanout
        return int(units[1].sum())

    def _write_markers(self, block: bool, keep: int | None = None) -> None:
        """Write the markers of decided shards, oldest first: up to one whose rewrite is still running
        (block=False), else waiting for rewrites until at most `keep` are left (None: all written)."""
        while self.waiting:
            shard, marker, future = self.waiting[0]
            if future is not None and not future.done() and not block:
                return
            if keep is not None and sum(f is not None for _, _, f in self.waiting) <= keep:
                return
            if future is not None:
                parts, part_rows, new_rejects = future.result()
                marker["files"] = {"parts": parts, "part_rows": part_rows,
                                   "rejects": marker["files"]["rejects"] + new_rejects}
            self.waiting.popleft()
            self.run_fs.write_json(marker_path(self.stage_dir, shard), marker)
            self.progress.update(marker["input_rows"], marker["rows"])

    def _guesses(self, pieces: list[dict]) -> list[dict[int, tuple[str, str]]]:
        """Each piece's own decision (its held rows), at the positions of the shard's kept rows."""
        rule, offset, out = self.stage.dedup, 0, []
        verdict = {FILTERED: (FILTERED, rule.duplicate), REJECTED: (REJECTED, rule.reused_id)} if rule else {}
        for r in pieces:
            positions, statuses = r["held_pos"] or [], r["held_status"] or []
            if len(positions) != len(statuses) or any(s not in verdict for s in statuses):
                raise LedgerError(f"{self.stage.name}: a receipt's held rows do not match their statuses")
            out.append({offset + p: verdict[s] for p, s in zip(positions, statuses)})
            offset += r["out"]
        return out

    def _overrides(self, pieces: list[dict]) -> dict[int, tuple[str, str]]:
        raw = b"".join(r["keys"] or b"" for r in pieces)
        if self.decide is None or not raw:
            return {}
        overrides = self.decide(from_bytes(raw))
        bad = {s for s, _ in overrides.values()} - {FILTERED, REJECTED}
        if bad:
            raise LedgerError(f"{self.stage.name}: dedup returned statuses {sorted(bad)}")
        return overrides

    def finish(self) -> None:
        self._write_markers(block=True)
        if self.order:
            shard = self.order[0]
            rows = self.specs[shard].rows
            whole = self.complete.get(shard, 0)
            got, want = self.units.get(shard, (np.zeros(rows, np.int64), np.full(rows, -1, np.int64)))
            lost = int(np.flatnonzero(got != want)[0])
            raise LedgerError(
                f"{self.stage.name}: the stream ended but {len(self.order)} shard(s) never came back "
                f"complete; shard {shard}: {whole} of its {rows} input rows accounted for (first missing: "
                f"row {lost}); nothing of it is committed, rerun to resume"
            )


def _as_future(value) -> Future:
    if isinstance(value, Future):
        return value
    done: Future = Future()
    done.set_result(value)
    return done


def _piece_key(rel: str) -> str:
    return rel.rsplit("/", 1)[-1].split("-", 1)[1]


def rewrite_parts(run_uri: str, stage_dir: str, parts_dir: str, pieces: list[dict],
                  overrides: dict[int, tuple[str, str]]) -> tuple[list[str], list[int], list[str]]:
    """Apply a dedup's decisions (positions among the shard's kept rows) to a shard's written pieces,
    in order: a piece whose own decision (`guess`, its held rows) was right keeps its files; another is
    rebuilt from its part and its held rows, in row order, and written again under new names (the old
    files become garbage once the marker names the new ones). Returns the shard's (parts, part_rows,
    rejects of the dedup). Runs in a Ray actor (runner.Rewriters), not on the driver."""
    run_fs = RunFS.from_uri(run_uri)
    new_parts, new_rows, rejects, offset = [], [], [], 0
    for piece in pieces:
        n = piece["rows"]
        mine = {pos - offset: v for pos, v in overrides.items() if offset <= pos < offset + n}
        offset += n
        if mine == piece["guess"]:
            new_parts += piece["parts"]
            new_rows += piece["part_rows"]
            rejects += [piece["held_rejects"]] if piece["held_rejects"] else []
            continue
        table, stem = _piece_rows(run_fs, parts_dir, piece)
        drop = pa.array(np.isin(np.arange(table.num_rows), list(mine)))
        kept, gone = table.filter(pc.invert(drop)), table.filter(drop)
        if kept.num_rows:
            new_parts.append(f"{stem}d.parquet")
            new_rows.append(kept.num_rows)
            run_fs.write_parquet(new_parts[-1], kept.replace_schema_metadata(table.schema.metadata))
        if gone.num_rows:
            rejects.append(f"{stage_dir}/{REJECTS}/{stem.rsplit('/', 1)[-1]}d.parquet")
            run_fs.write_parquet(rejects[-1], dedup_rejects(gone, [mine[i] for i in sorted(mine)]))
    return new_parts, new_rows, rejects


def _piece_rows(run_fs: RunFS, parts_dir: str, piece: dict) -> tuple[pa.Table, str]:
    """A dedup piece's kept rows as its worker had them before holding any (its part and its held rows
    merged back in row order), and the stem its rewritten files are named after."""
    parts, held, positions = piece["parts"], piece["held"], piece["held_pos"]
    if len(parts) > 1:
        raise LedgerError(f"a dedup piece names {len(parts)} part files; its worker writes one")
    part = run_fs.read_parquet(parts[0]) if parts else None
    stem = parts[0][: -len(".parquet")] if parts else f"{parts_dir}/{held.rsplit('/', 1)[-1][: -len('.parquet')]}"
    if held is None:
        return part, stem
    rows = run_fs.read_parquet(held)
    if part is not None:
        rows = pa.concat_tables([part, rows.cast(part.schema)])
    n = rows.num_rows
    if n != piece["rows"] or len(positions) != n - (part.num_rows if part is not None else 0):
        raise LedgerError(f"{stem}: the piece's files hold {n} rows, its receipt {piece['rows']}")
    is_held = np.zeros(n, bool)
    is_held[positions] = True
    source = np.empty(n, np.int64)
    source[~is_held] = np.arange(n - len(positions))
    source[is_held] = n - len(positions) + np.arange(len(positions))
    return rows.take(pa.array(source)), stem


def committed_files(run_fs: RunFS, stage_dir: str) -> tuple[list[str], list[str]]:
    """(parts, rejects) named by the stage's markers, in shard order."""
    parts, rejects = [], []
    for name in run_fs.listdir(f"{stage_dir}/{PARTS_MARK}", ".json"):
        files = (run_fs.read_json(f"{stage_dir}/{PARTS_MARK}/{name}") or {}).get("files") or {}
        parts += files.get("parts", [])
        rejects += files.get("rejects", [])
    return parts, rejects


def remove_garbage(run_fs: RunFS, stage_dir: str, parts_dir: str,
                   prefixes: str | tuple[str, ...] = "part") -> int:
    """Delete the part and reject files (and temporaries) that no committed marker names, and the
    temporaries of markers and manifests a crash left; returns how many. Held rows (`_held/`) are never
    named: once their shard is committed they are garbage too. Only names the writer gives
    (`<prefix>-*.parquet` for each of the stage's part prefixes; a dedup rewrite's rejects keep
    their part's prefix) are touched: other files in the folder (an index) are kept."""
    parts, rejects = committed_files(run_fs, stage_dir)
    named = set(parts) | set(rejects)
    stems = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
    removed = 0
    folders = ((parts_dir, stems), (f"{stage_dir}/{REJECTS}", ("part", *stems)), (f"{stage_dir}/{HELD}", stems))
    for folder, folder_stems in folders:
        for rel in run_fs.list_files(folder):
            name = rel.rsplit("/", 1)[-1]
            ours = any(name.startswith(f"{s}-") and name.endswith(".parquet") for s in folder_stems)
            temporary = any(name.startswith(f".{s}-") and name.endswith(".tmp") for s in folder_stems)
            if (ours or temporary) and rel not in named:
                run_fs.delete_file(rel)
                removed += 1
    for folder, stem in ((f"{stage_dir}/{PARTS_MARK}", "."), (stage_dir, f".{MANIFEST}.")):
        for rel in run_fs.list_files(folder):
            name = rel.rsplit("/", 1)[-1]
            if name.startswith(stem) and name.endswith(".tmp"):
                run_fs.delete_file(rel)
                removed += 1
    return removed
