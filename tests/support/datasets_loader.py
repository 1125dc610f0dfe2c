"""Load an export with whatever `datasets` the running interpreter has and print what came back as JSON.

Run by tests/unit/exporters/test_datasets_majors.py inside the venvs scripts/install_datasets_venvs.sh
builds (datasets 3.6 and 5.x); it imports nothing of fusegen. Usage:

    python datasets_loader.py parquet DATA_DIR        load_dataset("parquet", data_dir=DATA_DIR)
    python datasets_loader.py folder DIR [NAME SPLIT] load_dataset(DIR[, NAME, split=SPLIT]): the README's configs
    python datasets_loader.py json FILE               load_dataset("json", data_files=FILE)
    python datasets_loader.py many SPECS.json         each [mode, path, ...] of the JSON list, in one process

Output: {"version", "splits": {split: {"features": str, "rows": [...]}}} with every PIL image as
{"pil": [width, height]}; for `many`, a list of those (a load that raised: {"error": "..."}).
"""

from __future__ import annotations

import json
import sys

import datasets
from PIL import Image


def plain(value):
    if isinstance(value, Image.Image):
        return {"pil": list(value.size)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    return value


def main(mode: str, path: str, *rest: str) -> None:
    if mode == "many":
        with open(path, encoding="utf-8") as f:
            specs = json.load(f)
        results = []
        for spec in specs:
            try:
                results.append(load(*spec))
            except Exception as exc:  # noqa: BLE001 - reported per load, the others still run
                results.append({"error": f"{type(exc).__name__}: {exc}"})
        print(json.dumps(results))
    else:
        print(json.dumps(load(mode, path, *rest)))


def load(mode: str, path: str, *rest: str) -> dict:
    if mode == "parquet":
        loaded = datasets.load_dataset("parquet", data_dir=path)
    elif mode == "json":
        loaded = datasets.load_dataset("json", data_files=path)
    elif rest:
        name, split = rest
        loaded = {split: datasets.load_dataset(path, name, split=split)}
    else:
        loaded = datasets.load_dataset(path)
    out = {"version": datasets.__version__, "splits": {}}
    for split, ds in loaded.items():
        out["splits"][split] = {"features": str(ds.features), "rows": [plain(row) for row in ds]}
    return out


if __name__ == "__main__":
    main(*sys.argv[1:])
