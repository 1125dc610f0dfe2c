"""What ingest may answer: the reasons of its reject/filter taxonomy (the README's ingest row lists them)."""

from __future__ import annotations

FIELDS = ("doc_id", "text", "title", "image", "image_url", "domain")
IMAGE_KINDS = (
    "missing",
    "unreadable",
    "not_a_file",
    "too_large",
    "empty",
    "not_an_image",
    "format_not_allowed",
    "truncated",
    "too_small",
    "decompression_bomb",
)
INGEST_REASONS = frozenset(
    {
        "error:invalid_utf8",
        "error:invalid_json",
        "error:not_an_object",
        "error:missing_text",
        "error:empty_text",
        "error:text_too_long",
        "error:nul_byte",
        "error:invalid_unicode",
        "error:bad_image_url",
        "error:duplicate_doc_id",
        "filter:duplicate_text",
    }
    | {f"error:wrong_type:{field}" for field in FIELDS}
    | {f"error:image_{kind}" for kind in IMAGE_KINDS}
)


def commit_statuses(stage, table, seen) -> list[tuple[str, str]]:
    """(status, reason) per row of a shard as the committer leaves it: the kept rows' keys go through
    the dedup (`seen`, an io/dedup.FirstSeen, shard after shard) and its decisions are applied (what the
    driver does, without Ray)."""
    import pyarrow as pa

    from pipeline.stage import OK, REASON, STATUS

    out = list(zip(table[STATUS].to_pylist(), table[REASON].to_pylist()))
    kept = [i for i, (status, _) in enumerate(out) if status == OK]
    # int64 indices: an empty list (a shard with every row dropped) would infer the null type.
    keys = stage.dedup_keys(table.take(pa.array(kept, pa.int64())))
    for position, decided in seen.decide(keys).items():
        out[kept[position]] = decided
    return out
