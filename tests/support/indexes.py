"""Test helpers for declared indexes: record what an actor's searches are asked."""

from __future__ import annotations


def record_nprobe(open_index, monkeypatch) -> list[int]:
    """The nprobe of every search made on `open_index` (an OpenIndex); the search itself still runs."""
    seen: list[int] = []
    real = open_index.search

    def search(queries, k, nprobe=16):
        seen.append(nprobe)
        return real(queries, k, nprobe)

    monkeypatch.setattr(open_index, "search", search)
    return seen
