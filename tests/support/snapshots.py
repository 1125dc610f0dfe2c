"""Prompt snapshots (STYLE R12): a stage's rendered messages for a fixture row, compared with a file.

Regenerate after an intended prompt change with `FUSEGEN_UPDATE_SNAPSHOTS=1 pytest ...`, then review
the diff in git.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.prompts import default_prompts_dir

REPO = Path(__file__).resolve().parents[2]


def assert_prompt_snapshot(stage_cls, config, fixture: str, snapshot: str) -> None:
    row = json.loads((REPO / "tests" / "fixtures" / fixture).read_text(encoding="utf-8"))
    messages = stage_cls.render_row(default_prompts_dir(), config, row)
    rendered = "".join(f"--- {m['role']}\n{m['content']}\n" for m in messages)
    path = REPO / "tests" / "unit" / "snapshots" / snapshot
    if os.environ.get("FUSEGEN_UPDATE_SNAPSHOTS") == "1":
        path.write_text(rendered, encoding="utf-8")
    assert rendered == path.read_text(encoding="utf-8")
