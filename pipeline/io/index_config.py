"""The one config shape of every index a stage owns (STYLE R34): `kind`, `nlist`, `nprobe`.

Consistency's passage pool, the images stage's pool, the GME pool of gme_score / negatives and the
MegaPairs views all take an `index:` mapping of this shape. `kind` and `nlist` decide the index that
is built (they enter the index key, `IndexSpec.kind` / `.nlist`); `nprobe` only how it is searched
(`OpenIndex.search`). The keys these replaced (`ivf_nlist`, `ivf_nprobe`, and `index: ivf` as a plain
string) are config errors naming the new key: `RENAMED_KEYS` and `SCALAR_FORM` (pipeline/config.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pipeline.config import check

# The `RENAMED` of every config that owns an `index:`: the keys this shape replaced, and where they went.
RENAMED_KEYS: dict[str, str] = {"ivf_nlist": "index.nlist", "ivf_nprobe": "index.nprobe"}


@dataclass(frozen=True)
class IndexConfig:
    # `index: ivf` (a string) was the whole index config before this shape: it names `index.kind`.
    SCALAR_FORM: ClassVar[str] = "kind"

    # `flat` is exact (fine to a few million vectors on one node); `ivf` is approximate and faster.
    kind: Literal["flat", "ivf"] = "flat"
    # IVF lists; 0 = 4 * sqrt(n). Below 40 points per list faiss cannot train: the build falls back to flat.
    nlist: int = 0
    # IVF lists searched per query (recall vs speed).
    nprobe: int = 16

    def __post_init__(self) -> None:
        check(self.nlist >= 0, "index", "nlist", f"must be >= 0, 0 = automatic (got {self.nlist})")
        check(self.nprobe >= 1, "index", "nprobe", f"must be >= 1 (got {self.nprobe})")
