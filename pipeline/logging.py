"""One logger factory for the package (STYLE R29): stdlib logging with a single format."""

from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    root = logging.getLogger("pipeline")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("FUSEGEN_LOG_LEVEL", "INFO"))
        root.propagate = False
    return logging.getLogger(name if name.startswith("pipeline") else f"pipeline.{name}")


def quiet_transformers() -> None:
    """Turn off transformers' per-load progress bars ("Loading weights", "Writing model shards"):
    every actor loads a model, and N bars per stage drown the runner's one bar and its log lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
