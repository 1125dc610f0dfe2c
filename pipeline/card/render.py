"""Assemble the dataset card: YAML metadata the Hub reads, then the Markdown body from the template.

Metadata: `configs` with one `data_files` entry per split (so the Hub viewer and `load_dataset(repo)`
find them), license, task categories, size category, tags and the languages detected in the data.
The body comes from `templates/dataset_card.md.j2` (STYLE R10: text lives in files, not in code).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml

from pipeline.card.assets import ASSETS, write_examples, write_histograms
from pipeline.card.evaluation import evaluation_context
from pipeline.card.facts import RunFacts, check_publishable, read_run
from pipeline.card.licenses import license_of, obligations
from pipeline.card.megapairs import is_megapairs, megapairs_examples, megapairs_stats
from pipeline.card.published import published_config
from pipeline.card.stats import ExportStats, card_languages, export_stats
from pipeline.config import check

TEMPLATES = Path(__file__).with_name("templates")
CARD = "export/README.md"
_SIZES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)
_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+\-]*$")


@dataclass(frozen=True)
class CardConfig:
    # The source corpus's license (a Hub license id); "other" until the publisher says which.
    license: str = "other"
    # Shown in "how to load"; `fusegen push` passes the target repo.
    repo: str = "OWNER/NAME"
    pretty_name: str = ""
    examples: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check(
            bool(_LICENSE_ID.match(self.license)),
            "card",
            "license",
            f"must be a Hub license id such as cc-by-sa-4.0 or other (got {self.license!r})",
        )
        check(0 <= self.examples <= 50, "card", "examples", f"must be within 0..50 (got {self.examples})")


def size_category(rows: int) -> str:
    return next((name for limit, name in _SIZES if rows < limit), "n>1T")


def metadata(facts: RunFacts, stats: ExportStats, cfg: CardConfig) -> dict:
    languages = card_languages(stats.languages, stats.language_sampled)
    has_images = any(k != "text" for s in stats.splits.values() for k in (*s.query_modality, *s.pos_modality))
    tags = ["synthetic", "retrieval", "fusegen", facts.pipeline]
    tags += ["multimodal", "image-retrieval" if is_megapairs(stats.columns) else "fused-modal"] if has_images else []
    tags += ["hard-negatives"] if stats.has("neg_texts") or stats.has("hns") else []
    meta = {
        "license": cfg.license,
        "pretty_name": cfg.pretty_name or f"fusegen {facts.run_yaml.get('name', 'run')}",
        "language": languages or None,
        "multilinguality": ("multilingual" if len(languages) > 1 else "monolingual") if languages else None,
        "task_categories": ["text-retrieval"] + (["image-text-to-text"] if has_images else []),
        "task_ids": ["document-retrieval"],
        "size_categories": [size_category(stats.rows)],
        "source_datasets": ["original"],
        "annotations_creators": ["machine-generated"],
        "tags": tags,
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in facts.splits],
            }
        ],
    }
    return {k: v for k, v in meta.items() if v is not None}


def _funnel(facts: RunFacts) -> list[dict]:
    out = []
    for m in facts.manifests:
        reasons = sorted((m.get("reasons") or {}).items(), key=lambda kv: -kv[1])[:3]
        top = ", ".join(f"{r} ({n})" for r, n in reasons) or "—"
        out.append({"stage": m["stage"], "rows": m.get("rows") or {}, "reasons": top})
    return out


def _counts(stats: ExportStats) -> dict:
    """Tasks, modalities and image provenance summed over the splits."""

    def merged(attr: str) -> Counter:
        return sum((getattr(s, attr) for s in stats.splits.values()), start=Counter())

    total = stats.rows or 1
    return {
        "tasks": sorted(merged("tasks").items()),
        "modalities": [
            (side, name, n)
            for side, attr in (("query", "query_modality"), ("positive", "pos_modality"))
            for name, n in sorted(merged(attr).items())
        ],
        "provenance": [(k, n, f"{n / total:.1%}") for k, n in sorted(merged("image_source").items())],
        "image_licenses": sorted(merged("image_license").items(), key=lambda kv: (-kv[1], kv[0])),
    }


def _models(facts: RunFacts) -> dict:
    """Each model with its license, plus the obligations and flags of all of them."""
    identities = [m.identity for m in facts.models]
    rows = []
    for use in facts.models:
        lic = license_of(use.identity)
        rows.append(
            {
                "stage": use.stage,
                "role": use.role,
                "model_id": use.model_id,
                "revision": use.revision,
                "license": lic.license,
                "url": lic.url,
            }
        )
    from pipeline.stages.gme_score import TEXT_STAND_IN

    stand_in = sorted({(use.stage, use.model_id) for use in facts.models if use.role == TEXT_STAND_IN})
    return {
        "models": rows,
        # Stages whose GME scores are a text model's cosines (`embedder: text`): the card says so.
        "gme_stand_in": stand_in,
        "obligations": obligations(identities),
        "non_commercial": ", ".join(
            sorted({license_of(i).name for i in identities if license_of(i).non_commercial})
        ),
        "unknown_models": sorted({i for i in identities if not license_of(i).known}),
    }


def _context(facts: RunFacts, stats: ExportStats, cfg: CardConfig) -> dict:
    split_rows = {k: v.rows for k, v in stats.splits.items()}
    kind = ("MegaPairs-style (query image + instruction -> target image, hard negatives)"
            if is_megapairs(stats.columns) else "fused-modal")
    return {
        "title": cfg.pretty_name or f"fusegen {facts.run_yaml.get('name', 'run')}",
        "summary": (
            f"{stats.rows} rows of synthetic {kind} retrieval training data "
            f"({', '.join(f'{k}: {n}' for k, n in split_rows.items())}), made by fusegen's "
            f"`{facts.pipeline}` pipeline."
        ),
        "repo": cfg.repo,
        "seed": cfg.seed,
        "version": facts.version,
        "pipeline": facts.pipeline,
        "splits": split_rows,
        "columns": stats.columns,
        "swift": all(stats.has(c) for c in ("messages", "positive_messages", "negative_messages")),
        "funnel": _funnel(facts),
        **_counts(stats),
        "languages": stats.languages.most_common(),
        "language_sampled": stats.language_sampled,
        **_models(facts),
        "prompts": facts.prompts,
        "license": cfg.license,
        "config_yaml": yaml.safe_dump(published_config(facts.run_yaml), sort_keys=False, allow_unicode=True),
    }


def _cell(value: object) -> str:
    """Make a value safe inside a Markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def render(facts: RunFacts, stats: ExportStats, cfg: CardConfig, examples: list, histograms: dict,
           megapairs: dict | None = None, evaluation: dict | None = None) -> str:
    """`megapairs` (MegaPairs exports: megapairs_stats plus `examples`) fills the MegaPairs section; the
    GME-only sections then say they do not apply. `evaluation` (card/evaluation.py) adds the Evaluation
    section when the run has a `fusegen eval` report."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["cell"] = _cell
    meta = yaml.safe_dump(metadata(facts, stats, cfg), sort_keys=False, allow_unicode=True)
    ctx = {
        **_context(facts, stats, cfg),
        "metadata_yaml": meta,
        "examples": examples,
        "histograms": histograms,
        "megapairs": megapairs,
        "evaluation": evaluation,
    }
    return env.get_template("dataset_card.md.j2").render(**ctx)


def build_card(run_dir: str, cfg: CardConfig | None = None) -> str:
    """Write export/README.md (+ export/assets/) for a finished run; returns the card's path.

    Raises PublishError when the run has no export or its ledger does not balance.
    """
    cfg = cfg or CardConfig()
    facts = read_run(run_dir)
    stats = export_stats(facts.run_fs, facts.splits, cfg.seed)
    check_publishable(facts, stats.rows)
    # Assets of an earlier card (other seed, other scores) must not linger in the upload.
    facts.run_fs.delete_dir(ASSETS)
    histograms = write_histograms(facts.run_fs, stats.scores)
    first = next(iter(facts.splits.values()))
    megapairs = None
    if is_megapairs(stats.columns):
        examples = []
        megapairs = {**megapairs_stats(facts.run_fs, facts.splits),
                     "examples": megapairs_examples(facts.run_fs, first, cfg.examples, cfg.seed)}
    else:
        examples = write_examples(facts.run_fs, first, cfg.examples, cfg.seed)
    evaluation = evaluation_context(facts.run_fs)
    facts.run_fs.write_bytes(CARD, render(facts, stats, cfg, examples, histograms, megapairs, evaluation).encode())
    return facts.run_fs.path(CARD)
