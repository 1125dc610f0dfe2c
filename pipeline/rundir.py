"""The run directory: its context object, stage folder names, and the compatibility guard.

`run.yaml` holds the resolved config exactly as used plus the pipeline track, stage list and
package version. A run dir made by another stage list (e.g. the MegaPairs track) or another
major.minor package version is refused unless `--force`, which wipes the stage folders it replaces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline import __version__
from pipeline.errors import RunDirError
from pipeline.io.fs import RunFS

RUN_YAML = "run.yaml"
EXPORT_DIR = "export"
INDEX_DIR = "_index"


@dataclass
class RunContext:
    config: object  # pipeline.settings.RunConfig
    run_uri: str
    run_fs: RunFS
    prompts_dir: Path
    cache_dir: Path
    force: bool = False
    # Where declared indexes live: the run's own `_index/`, or a shared folder two runs can reuse.
    index_uri: str = ""

    @classmethod
    def create(cls, config, run_dir: str | None = None, force: bool = False, index_dir: str | None = None) -> RunContext:
        uri = _absolute(run_dir or config.run_dir)
        shared = index_dir or config.index_dir
        return cls(
            config=config,
            run_uri=uri,
            run_fs=RunFS.from_uri(uri),
            prompts_dir=Path(config.prompts_dir).expanduser().resolve(),
            cache_dir=Path(config.cache_dir).expanduser(),
            force=force,
            index_uri=_absolute(shared) if shared else f"{uri.rstrip('/')}/{INDEX_DIR}",
        )


    @property
    def shared_indexes(self) -> bool:
        """True when indexes live outside the run dir (other runs may use them: never pruned)."""
        return self.index_uri != f"{self.run_uri.rstrip('/')}/{INDEX_DIR}"


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def stage_dirs(stages) -> list[tuple[str, str]]:
    """(stage folder, parts folder) per stage: `NN_name/` and, for export, `export/` with `data/`."""
    out = []
    for i, stage in enumerate(stages, start=1):
        if stage.name == "export":
            out.append((EXPORT_DIR, f"{EXPORT_DIR}/data"))
        else:
            out.append((f"{i:02d}_{stage.name}", f"{i:02d}_{stage.name}"))
    return out


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_run_dir(ctx: RunContext) -> None:
    """Refuse a run dir of another pipeline or package version; then write run.yaml."""
    cfg = ctx.config
    old = ctx.run_fs.read_bytes(RUN_YAML).decode() if ctx.run_fs.exists(RUN_YAML) else None
    if old is not None:
        prev = yaml.safe_load(old) or {}
        problems = []
        if prev.get("pipeline") != cfg.pipeline or list(prev.get("stages", [])) != list(cfg.stages):
            problems.append(
                f"it was made by pipeline {prev.get('pipeline')!r} with stages {prev.get('stages')}, "
                f"this config runs {cfg.pipeline!r} with stages {list(cfg.stages)}"
            )
        if _minor(str(prev.get("fusegen_version", ""))) != _minor(__version__):
            problems.append(f"it was made by fusegen {prev.get('fusegen_version')}, this is {__version__}")
        if problems and not ctx.force:
            raise RunDirError(
                f"run dir {ctx.run_uri} is not compatible: {'; '.join(problems)}. "
                "Use another --run-dir, or pass --force to replace its stage outputs."
            )
        if problems:
            for name in ctx.run_fs.fs.get_file_info(_selector(ctx)):
                if name.type.name == "Directory":
                    ctx.run_fs.fs.delete_dir(name.path)
    ctx.run_fs.mkdir("")
    resolved = {"fusegen_version": __version__, **cfg.as_dict()}
    ctx.run_fs.write_bytes(RUN_YAML, yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True).encode())


def _selector(ctx: RunContext):
    import pyarrow.fs as pafs

    return pafs.FileSelector(ctx.run_fs.root, recursive=False)
