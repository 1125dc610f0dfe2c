"""One shape for every export format as `fusegen validate` reads it back: triplets of candidates.

Each format's `read(root, problems)` parses its files the way the consuming project's loader does
(field names, list shapes, image path resolution), records schema problems in `problems`, and yields
`Triplet`s; the validator's content checks then run the same way for every format.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Img:
    """An image as the loader finds it: inline bytes (GME Parquet) or a file path."""

    where: str
    data: bytes | None = None
    path: str | None = None

    @classmethod
    def at(cls, root: str, rel: str, where: str) -> Img:
        """A path as the loaders resolve it: absolute as is, relative against the export's root."""
        return cls(where, path=rel if os.path.isabs(rel) else os.path.join(root, rel))

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            return f.read()


@dataclass(frozen=True)
class Candidate:
    doc_id: str | None
    text: str
    image: Img | None


@dataclass(frozen=True)
class Triplet:
    id: str | None
    split: str
    query_text: str
    query_image: Img | None
    pos: Candidate
    negs: list[Candidate]
    where: str
    # What must not span two splits: the query image for MegaPairs rows (their `query_id`); None:
    # the positive's doc id (GME: the passage).
    group: str | None = None


class Problems:
    """Violations found so far: every one counted, the first `cap` kept with where they are."""

    def __init__(self, cap: int = 20) -> None:
        self.cap, self.count, self.first = cap, 0, []

    def add(self, where: str, message: str) -> None:
        self.count += 1
        if len(self.first) < self.cap:
            self.first.append(f"{where}: {message}")

    def json_line(self, line: str, where: str) -> dict | None:
        """A JSONL record, or None (and a problem) when the line is not a JSON object."""
        if not line.strip():
            return None
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            self.add(where, f"not valid JSON ({exc.msg})")
            return None
        if not isinstance(value, dict):
            self.add(where, "not a JSON object")
            return None
        return value

    def __bool__(self) -> bool:
        return self.count > 0
