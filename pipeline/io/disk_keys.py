"""Keys (bytes) -> text in an SQLite table on disk: what an exporter must remember per row or per image
(the M-BEIR pool's candidate numbers, an export's images written) without holding millions of them in
memory. SQLite keeps at most `cache_mib` of pages; the file is scratch, removed by `close`."""

from __future__ import annotations

import os
import sqlite3


class DiskKeys:
    def __init__(self, path: str, cache_mib: int = 16) -> None:
        self.path = path
        if os.path.exists(path):
            os.remove(path)  # a crashed export's scratch: nothing in it to recover
        self.db = sqlite3.connect(path, isolation_level=None)
        # A scratch table: nothing to recover after a crash (the export is redone), so no journal.
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{cache_mib * 1024}",
                       "temp_store=FILE", "locking_mode=EXCLUSIVE"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE keys (k BLOB PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID")
        self.db.execute("BEGIN")

    def get(self, key: bytes) -> str | None:
        row = self.db.execute("SELECT v FROM keys WHERE k = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def __contains__(self, key: bytes) -> bool:
        return self.get(key) is not None

    def __setitem__(self, key: bytes, value: str) -> None:
        self.db.execute("INSERT INTO keys VALUES (?, ?)", (key, value))

    def add(self, key: bytes) -> bool:
        """Remember `key` (as a set does); True when it was new."""
        return self.db.execute("INSERT OR IGNORE INTO keys VALUES (?, '')", (key,)).rowcount == 1

    def close(self) -> None:
        self.db.close()
        if os.path.exists(self.path):
            os.remove(self.path)
