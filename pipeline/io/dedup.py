"""Dedup across a whole stage output, "first occurrence in shard order wins", with no per-key state on the
driver (issue 20). Ingest (texts, doc_ids) and the MegaPairs pool (image hashes, ids) use it.

A row has two 128-bit keys: its content key and its id key. Going through a shard's kept rows in order,
a row whose content key an earlier kept row holds is dropped as a duplicate; else one whose id key an
earlier kept row holds is dropped as a reused id; else the row is kept and both keys are remembered.
"Earlier" spans every shard before it in shard order, whatever order the shards finish in: the committer
decides shards strictly in shard order (`Stage.ordered_commit`).

Where the keys live: `KeyOwner`s, each owning the keys whose high word falls in its partition (hi mod
owners), holding them in sorted NumPy runs (16 bytes a key, `SeenKeys`). In a run they are Ray actors,
spread over the nodes; the driver's `FirstSeen` only coordinates, one shard at a time: it asks each owner
which of the shard's keys an earlier shard kept (one call per owner), decides the shard's rows (the
repeats inside the shard with the shard's own keys, forgotten after), and sends each owner the keys of
the rows kept (without waiting: an actor runs one caller's calls in the order they were sent). Its memory
is one shard's keys, whatever the corpus.

Resume: the owners die with the driver; `FirstSeen.load` rebuilds them from the committed parts (a prefix
of the shard order, since commits are ordered), reading only the key columns, in Ray tasks that send the
keys straight to their owners. A resumed run therefore decides as a clean one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.columns import FILTERED, REJECTED

# A row's keys as the workers send them: (n, 4) uint64, columns content hi, content lo, id hi, id lo.
KEY_WORDS = 4


@dataclass(frozen=True)
class DedupRule:
    """What a stage dedups on: the columns of its parts the keys come from (read again on resume) and
    the reasons of the rows it drops."""

    columns: tuple[str, ...]
    duplicate: str
    reused_id: str


def hex_keys(hexes: Sequence[str]) -> np.ndarray:
    """The first 128 bits of hex digests (a content hash, a SHA-256) -> (n, 2) uint64 (hi, lo)."""
    if not len(hexes):
        return np.zeros((0, 2), np.uint64)
    raw = bytes.fromhex("".join(h[:32] for h in hexes))
    return np.frombuffer(raw, ">u8").reshape(-1, 2).astype(np.uint64)


def text_keys(values: Sequence[str]) -> np.ndarray:
    """128-bit BLAKE2b of each string (an id) -> (n, 2) uint64 (hi, lo)."""
    raw = b"".join(hashlib.blake2b(v.encode("utf-8"), digest_size=16).digest() for v in values)
    return np.frombuffer(raw, ">u8").reshape(-1, 2).astype(np.uint64)


def row_keys(content: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(n, 2) content keys and (n, 2) id keys -> the (n, 4) array `Stage.dedup_keys` returns."""
    return np.concatenate([content.reshape(-1, 2), ids.reshape(-1, 2)], axis=1).astype(np.uint64)


def to_bytes(keys: np.ndarray) -> bytes:
    return np.ascontiguousarray(keys, dtype="<u8").tobytes()


def from_bytes(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, "<u8").reshape(-1, KEY_WORDS)


class SeenKeys:
    """A set of 128-bit keys, (n, 2) uint64, in sorted runs (by the high word) whose sizes at least double
    from the newest to the oldest: 16 bytes a key, O(log n) runs, lookups by binary search."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(hi) for hi, _ in self.runs)

    @property
    def nbytes(self) -> int:
        return sum(hi.nbytes + lo.nbytes for hi, lo in self.runs)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), bool)
        if not len(keys):
            return found
        qhi, qlo = keys[:, 0], keys[:, 1]
        for hi, lo in self.runs:
            left = np.searchsorted(hi, qhi, "left")
            right = np.searchsorted(hi, qhi, "right")
            one = (right - left) == 1
            found[one] |= lo[left[one]] == qlo[one]
            # Two keys with the same high word (rare): look at each.
            for i in np.flatnonzero((right - left) > 1):
                found[i] |= bool(np.any(lo[left[i]:right[i]] == qlo[i]))
        return found

    def add(self, keys: np.ndarray) -> None:
        """Remember `keys` (the caller adds only keys not held yet)."""
        if not len(keys):
            return
        hi, lo = keys[:, 0].astype(np.uint64), keys[:, 1].astype(np.uint64)
        order = np.argsort(hi, kind="stable")
        self.runs.append((hi[order], lo[order]))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            (h1, l1), (h2, l2) = self.runs.pop(), self.runs.pop()
            hi, lo = np.concatenate([h2, h1]), np.concatenate([l2, l1])
            order = np.argsort(hi, kind="stable")
            self.runs.append((hi[order], lo[order]))


class KeyOwner:
    """One partition of a dedup's seen keys (a Ray actor in a run): content keys and id keys apart."""

    def __init__(self) -> None:
        self.content, self.ids = SeenKeys(), SeenKeys()

    def lookup(self, content: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.content.contains(content), self.ids.contains(ids)

    def add(self, content: np.ndarray, ids: np.ndarray) -> None:
        self.content.add(content)
        self.ids.add(ids)

    def size(self) -> tuple[int, int]:
        """(keys held, bytes they take)."""
        return len(self.content) + len(self.ids), self.content.nbytes + self.ids.nbytes


class FirstSeen:
    """The driver's side of a dedup: decides each shard's kept rows in turn, the keys kept by the
    owners. `owners` are `KeyOwner`s (tests, benches without Ray) or Ray actor handles of them
    (`FirstSeen.on_ray`)."""

    def __init__(self, rule: DedupRule, owners: Sequence, remote: bool = False) -> None:
        if not owners:
            raise ValueError("a dedup needs at least one key owner")
        self.rule, self.owners, self.remote = rule, list(owners), remote
        # The last shard's `add` calls: collected with the next shard's lookups, so an owner that failed to
        # take keys fails the stage (a resume redoes it) instead of answering "not seen" later.
        self.adding: list = []

    @classmethod
    def local(cls, rule: DedupRule, owners: int = 2) -> FirstSeen:
        return cls(rule, [KeyOwner() for _ in range(owners)])

    @classmethod
    def on_ray(cls, rule: DedupRule, owners: int | None = None) -> FirstSeen:
        """Owners as Ray actors (0 CPUs), one per alive node unless told, spread over the nodes."""
        from pipeline.raycluster import spread_actors

        return cls(rule, spread_actors(KeyOwner, count=owners), remote=True)

    def close(self) -> None:
        if self.remote:
            import ray

            for owner in self.owners:
                ray.kill(owner)
        self.owners, self.adding = [], []

    def _call(self, owner, method: str, *args):
        return getattr(owner, method).remote(*args) if self.remote else getattr(owner, method)(*args)

    def _get(self, values: list) -> list:
        if not self.remote:
            return values
        import ray

        return ray.get(values)

    def _parts(self, keys: np.ndarray) -> np.ndarray:
        return (keys[:, 0] % np.uint64(len(self.owners))).astype(np.int64)

    def decide(self, keys: np.ndarray) -> dict[int, tuple[str, str]]:
        """One shard's kept rows' keys ((n, 4), in row order), the shards before it all decided ->
        row position -> (status, reason) for the rows it drops; the kept rows' keys go to their owners."""
        keys = np.asarray(keys, np.uint64).reshape(-1, KEY_WORDS)
        content, ids = keys[:, :2], keys[:, 2:]
        c_owner, i_owner = self._parts(content), self._parts(ids)
        asked = [self._call(o, "lookup", content[c_owner == j], ids[i_owner == j]) for j, o in enumerate(self.owners)]
        c_hit, i_hit = np.zeros(len(keys), bool), np.zeros(len(keys), bool)
        answers = self._get(asked + self.adding)[: len(asked)]
        for j, (c, i) in enumerate(answers):
            c_hit[c_owner == j] = c
            i_hit[i_owner == j] = i
        dropped = _decide_shard(content, ids, c_hit, i_hit)
        kept = np.ones(len(keys), bool)
        kept[list(dropped)] = False
        # Not waited for: an owner runs them before the next shard's lookups (one caller, in order).
        self.adding = [self._call(owner, "add", content[kept & (c_owner == j)], ids[kept & (i_owner == j)])
                       for j, owner in enumerate(self.owners)]
        return _verdicts(dropped, self.rule)

    def load(self, run_uri: str, parts: Sequence[str], keys_of: Callable, chunk: int = 64) -> int:
        """Rebuild the owners from committed parts (paths in the run filesystem): `keys_of(table)` gives
        the parts' keys as `decide` takes them. Returns the keys loaded."""
        chunks = [list(parts[i:i + chunk]) for i in range(0, len(parts), chunk)]
        if not self.remote:
            return sum(load_parts(run_uri, c, self.rule.columns, keys_of, self.owners, False) for c in chunks)
        import ray

        task = ray.remote(num_cpus=0)(load_parts)
        return sum(ray.get([task.remote(run_uri, c, self.rule.columns, keys_of, self.owners, True) for c in chunks]))

    def size(self) -> tuple[int, int]:
        """(keys held, bytes they take) over all owners."""
        sizes = self._get([self._call(o, "size") for o in self.owners])
        return sum(n for n, _ in sizes), sum(b for _, b in sizes)


def load_parts(run_uri: str, parts: list[str], columns: tuple[str, ...], keys_of: Callable, owners: list,
               remote: bool) -> int:
    """Read the key columns of committed parts and hand their keys to the owners (a Ray task on resume)."""
    from pipeline.io.fs import RunFS

    run_fs = RunFS.from_uri(run_uri)
    tables = [run_fs.read_parquet(rel, columns=list(columns)) for rel in parts]
    keys = np.concatenate([keys_of(t) for t in tables]) if tables else np.zeros((0, KEY_WORDS), np.uint64)
    content, ids = keys[:, :2], keys[:, 2:]
    n = np.uint64(len(owners))
    c_owner, i_owner = content[:, 0] % n, ids[:, 0] % n
    calls = []
    for j, owner in enumerate(owners):
        args = content[c_owner == j], ids[i_owner == j]
        calls.append(owner.add.remote(*args) if remote else owner.add(*args))
    if remote:
        import ray

        ray.get(calls)
    return len(keys)


def decide_alone(keys: np.ndarray, rule: DedupRule) -> dict[int, tuple[str, str]]:
    """What `FirstSeen.decide` returns for these rows if no earlier shard held any of their keys: the
    repeats among them alone (a worker's guess at its piece, io/commit.py; the committer checks it)."""
    keys = np.asarray(keys, np.uint64).reshape(-1, KEY_WORDS)
    none = np.zeros(len(keys), bool)
    return _verdicts(_decide_shard(keys[:, :2], keys[:, 2:], none, none), rule)


def _verdicts(dropped: dict[int, str], rule: DedupRule) -> dict[int, tuple[str, str]]:
    return {i: (FILTERED, rule.duplicate) if why == "content" else (REJECTED, rule.reused_id)
            for i, why in dropped.items()}


def _decide_shard(content: np.ndarray, ids: np.ndarray, c_hit: np.ndarray, i_hit: np.ndarray) -> dict[int, str]:
    """Row position -> "content" or "id" for the rows dropped, given which keys earlier shards kept.

    A row whose content and id keys are both unique in the shard is decided by the earlier shards alone:
    the keys the shard's own earlier rows keep are never its. Only the rows sharing a key with another
    row of the shard (and any key such a row keeps is only ever looked up by such rows) go through the
    rule in order."""
    alone = ~(_repeated(content) | _repeated(ids))
    out = {int(i): "content" if c_hit[i] else "id" for i in np.flatnonzero((c_hit | i_hit) & alone)}
    rows = np.flatnonzero(~alone)
    seen_c: set[tuple[int, int]] = set()
    seen_i: set[tuple[int, int]] = set()
    for i, c, d in zip(rows.tolist(), map(tuple, content[rows].tolist()), map(tuple, ids[rows].tolist())):
        if c_hit[i] or c in seen_c:
            out[i] = "content"
        elif i_hit[i] or d in seen_i:
            out[i] = "id"
        else:
            seen_c.add(c)
            seen_i.add(d)
    return out


def _repeated(keys: np.ndarray) -> np.ndarray:
    """(n, 2) keys -> which rows hold a key another row holds too."""
    out = np.zeros(len(keys), bool)
    if len(keys) < 2:
        return out
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    ordered = keys[order]
    same = np.all(ordered[1:] == ordered[:-1], axis=1)
    out[order[1:][same]] = True
    out[order[:-1][same]] = True
    return out
