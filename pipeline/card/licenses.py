"""The licenses and obligations of the models a run used, looked up in the package's table.

`licenses.yaml` beside this module is the one place model licenses are written down; the dataset card
is assembled from it, never typed per card. A model the table does not know is listed as unknown, so
the card tells the publisher to check it rather than staying silent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

TABLE = Path(__file__).with_name("licenses.yaml")
UNKNOWN = "unknown: not in fusegen's license table, check the model's own card before publishing"


@dataclass(frozen=True)
class ModelLicense:
    name: str
    license: str
    url: str = ""
    non_commercial: bool = False
    obligations: tuple[str, ...] = field(default_factory=tuple)
    known: bool = True


@lru_cache(maxsize=1)
def _table() -> tuple[tuple[re.Pattern, ModelLicense], ...]:
    entries = yaml.safe_load(TABLE.read_text()) or []
    return tuple(
        (
            re.compile(e["match"], re.IGNORECASE),
            ModelLicense(
                name=e["name"],
                license=e["license"],
                url=e.get("url", ""),
                non_commercial=bool(e.get("non_commercial", False)),
                obligations=tuple(e.get("obligations") or ()),
            ),
        )
        for e in entries
    )


def license_of(model_identity: str) -> ModelLicense:
    """The first table entry whose pattern occurs in the identity a manifest recorded."""
    for pattern, entry in _table():
        if pattern.search(model_identity):
            return entry
    return ModelLicense(name=model_identity, license=UNKNOWN, known=False)


def obligations(identities: list[str]) -> list[str]:
    """Every obligation of the given models, each once, in first-seen order."""
    seen: dict[str, None] = {}
    for identity in identities:
        for text in license_of(identity).obligations:
            seen.setdefault(text, None)
    return list(seen)
