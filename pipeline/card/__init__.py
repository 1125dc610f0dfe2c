"""The dataset card: `build_card(run_dir, CardConfig())` writes RUN_DIR/export/README.md.

Modules: facts (run dir files -> manifests, splits, models, prompts; the publish guard), stats
(streamed numbers over the export), assets (histograms, example thumbnails), licenses (the table of
model licenses and obligations), render (metadata + the Jinja template in templates/).
"""

from __future__ import annotations

from pipeline.card.render import CardConfig, build_card

__all__ = ["CardConfig", "build_card"]
