"""Prompt files under prompts/<stage>/ (STYLE R10-R12): load, check, render; no prompt text here.

Templates use StrictUndefined, so a variable the row does not provide is an error. Stages load the
template sources on the driver (their bytes enter the fingerprint) and ship the sources to workers.
`fusegen render-prompt doc2query --row tests/fixtures/doc.json` prints a stage's messages for one row.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import yaml

from pipeline.errors import PipelineConfigError

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


def default_prompts_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "prompts"


def load_sources(prompts_dir: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Read `names` (paths relative to prompts/) into {name: source}; missing files are config errors."""
    out = {}
    for name in names:
        path = prompts_dir / name
        if not path.is_file():
            raise PipelineConfigError(f"prompts: file not found: {path}")
        out[name] = path.read_text(encoding="utf-8")
    return out


def render(source: str, name: str, **variables) -> str:
    try:
        return _ENV.from_string(source).render(**variables).strip()
    except jinja2.UndefinedError as exc:
        raise PipelineConfigError(f"prompts: {name}: {exc.message}; the template uses a variable the stage does not provide") from None
    except jinja2.TemplateSyntaxError as exc:
        raise PipelineConfigError(f"prompts: {name}: syntax error on line {exc.lineno}: {exc.message}") from None


def load_examples(source: str, name: str) -> list[dict]:
    try:
        data = yaml.safe_load(source) or []
    except yaml.YAMLError as exc:
        raise PipelineConfigError(f"prompts: {name} is not valid YAML: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise PipelineConfigError(f"prompts: {name} must be a YAML list of mappings")
    return data
