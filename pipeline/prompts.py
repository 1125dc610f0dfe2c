"""Prompt files under prompts/<stage>/ (STYLE R10-R12): load, check, render; no prompt text here.

Templates use StrictUndefined, so a variable the row does not provide is an error. Stages load the
template sources on the driver (their bytes enter the fingerprint) and ship the sources to workers.
`python -m pipeline.prompts render doc2query/user --row tests/fixtures/doc.json` prints one.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.prompts")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="render a stage's messages for one row")
    r.add_argument("stage", help="stage name, e.g. doc2query")
    r.add_argument("--row", required=True, help="JSON file with one input row")
    r.add_argument("--prompts-dir", default=str(default_prompts_dir()))
    args = parser.parse_args(argv)
    from pipeline.stages import STAGES

    name = args.stage.split("/")[0]
    if name not in STAGES:
        parser.error(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    stage_cls = STAGES[name]
    if not stage_cls.prompt_files:
        prompted = [n for n, c in STAGES.items() if c.prompt_files]
        parser.error(f"stage {name!r} has no prompts; stages with prompts: {', '.join(prompted)}")
    row = json.loads(Path(args.row).read_text(encoding="utf-8"))
    messages = stage_cls.render_row(Path(args.prompts_dir), stage_cls.config_cls(), row)
    for m in messages:
        sys.stdout.write(f"--- {m['role']}\n{m['content']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
