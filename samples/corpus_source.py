"""The sample corpus's source data, samples/corpus/source/passages.yaml, and what follows from it.

`load_rows` reads the entries (one per line of passages.jsonl, in order), `line_bytes` turns an entry
into its JSONL line, and `expected_ingest` / `expected_reasons` say what ingest must answer for the
corpus, from each entry's `expect`. The generator writes the corpus with these; the tests read their
expectations from them, so no count of good or bad rows is written anywhere else.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import yaml

SOURCE = Path(__file__).resolve().parent / "corpus" / "source" / "passages.yaml"
# Keys of a passage entry that become the JSON object's keys, in the order they are written.
RECORD_KEYS = ("doc_id", "title", "text", "image", "domain")
ENTRY_KEYS = frozenset(RECORD_KEYS) | {"lang", "repeat", "line", "encoding", "expect", "why"}


def load_rows(source: Path = SOURCE) -> list[dict]:
    """The entries of the source file; an unknown key or a bad `expect` is an error, not ignored."""
    rows = yaml.safe_load(source.read_text(encoding="utf-8"))
    for n, row in enumerate(rows, 1):
        unknown = set(row) - ENTRY_KEYS
        if unknown:
            raise ValueError(f"{source.name} entry {n}: unknown keys {sorted(unknown)}")
        if ("text" in row) == ("line" in row):
            raise ValueError(f"{source.name} entry {n}: give either `text` or `line`")
        if "expect" in row and not str(row["expect"]).startswith(("error:", "filter:")):
            raise ValueError(f"{source.name} entry {n}: `expect` must be error:* or filter:*")
    return rows


def text_of(row: dict):
    """The passage text as written (a non-string text, such as a number, is kept as it is)."""
    text = row["text"]
    return (text * row["repeat"]).strip() if "repeat" in row else text


def line_bytes(row: dict) -> bytes:
    if "line" in row:
        return row["line"].encode(row.get("encoding", "utf-8"))
    record = {key: row[key] for key in RECORD_KEYS if key in row}
    record["text"] = text_of(row)
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def build_jsonl(rows: list[dict]) -> bytes:
    lines = [line_bytes(row) for row in rows]
    if any(b"\n" in line for line in lines):
        raise ValueError("an entry's line holds a line break")
    return b"".join(line + b"\n" for line in lines)


def is_good(row: dict) -> bool:
    return "expect" not in row


def expected_reasons(rows: list[dict]) -> list[str]:
    """Per line: the reason ingest must give, or "" for a good row."""
    return [row.get("expect", "") for row in rows]


def expected_ingest(rows: list[dict]) -> dict[str, int]:
    """The ingest stage's row counts for the corpus, as its manifest reports them."""
    kinds = Counter(reason.split(":", 1)[0] for reason in expected_reasons(rows) if reason)
    return {
        "in": len(rows),
        "out": sum(map(is_good, rows)),
        "filtered": kinds["filter"],
        "rejected": kinds["error"],
    }
