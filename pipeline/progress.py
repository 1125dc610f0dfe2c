"""One terminal progress bar per stage, counted in input rows, with the running funnel."""

from __future__ import annotations

import sys

from tqdm import tqdm


class StageProgress:
    def __init__(self, stage: str, total: int, done: int) -> None:
        self.counts = {"out": 0, "filtered": 0, "rejected": 0}
        self.bar = tqdm(
            total=total,
            initial=done,
            desc=f"{stage:>12}",
            unit="rows",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
            disable=None if total else True,
        )

    def update(self, n: int, rows: dict) -> None:
        for key in self.counts:
            self.counts[key] += rows[key]
        self.bar.set_postfix(self.counts, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
